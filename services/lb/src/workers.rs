//! Per-core data-path threads: each runs its own current-thread tokio runtime, and every
//! accepted connection is handed whole to one of them, round robin.
//!
//! This is HAProxy's `nbthread` and nginx's worker model rather than tokio's work-stealing
//! runtime. With work stealing, a client connection's task, the backend connection's task
//! it talks to, and the pooled backend connections all drift between threads, so most
//! requests pay cross-thread wake-ups and shared cache lines. Here a connection, the backend
//! connections it opens (spawned on the same runtime) and the pool they return to (one per
//! thread, see [`crate::proxy`]) stay on one thread for their whole life; threads share only
//! the routing table, the counters and the listener.
//!
//! The listening sockets stay on the control runtime (one socket per address, so the
//! listener hand-over of [`crate::handover`] is unchanged); each accepted socket is
//! deregistered there and registered with its worker's reactor, one hop per connection,
//! none per request.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("start data-path worker {index}")]
    Start {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// The data-path threads; dropping this stops them (after their connections were waited
/// for by their accept loops).
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    /// Round-robin position of the next connection.
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker threads (`rctl-lb-worker-{i}`), each with its own runtime.
    pub fn start(n: usize) -> Result<Self, WorkersError> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for index in 0..n {
            let err = |source| WorkersError::Start { index, source };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(err)?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("rctl-lb-worker-{index}"))
                .spawn(move || runtime.block_on(stop.cancelled()))
                .map_err(err)?;
            threads.push(thread);
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads,
        })
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker, round robin.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = next_index(&self.next, self.handles.len());
        self.handles[i].spawn(task);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        // The last reference may go with a connection that outlived the grace period, on
        // a worker thread itself: that one cannot wait for itself, and ends on its own.
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            if t.thread().id() != me {
                // A worker that panicked has nothing left to clean up.
                let _ = t.join();
            }
        }
    }
}

/// The next round-robin index below `n` (n > 0).
fn next_index(counter: &AtomicUsize, n: usize) -> usize {
    counter.fetch_add(1, Ordering::Relaxed) % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_worker_in_turn() {
        let c = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6).map(|_| next_index(&c, 3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn tasks_run_on_the_worker_threads() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().map(str::to_string);
                tx.send(name).unwrap();
            });
        }
        let mut names: Vec<_> = (0..4).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "rctl-lb-worker-0",
                "rctl-lb-worker-0",
                "rctl-lb-worker-1",
                "rctl-lb-worker-1"
            ]
        );
    }
}
