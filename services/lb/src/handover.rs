//! Restart without refusing a connection: the old LB hands its listening sockets over.
//!
//! An LB started with `--handover PATH` serves a Unix socket at PATH. A new LB started with
//! the same flag first connects there; if an old LB answers, it sends every listening socket
//! it owns (SCM_RIGHTS), then stops accepting and drains its connections. The kernel socket
//! never closes, so a connection arriving during the restart waits in its backlog instead of
//! being refused, and the new LB accepts it from the very same socket. (SO_REUSEPORT alone
//! does not give this: closing one socket of a reuseport group resets the connections
//! queued on it.)
//!
//! Wire format: one 64-byte frame per socket — its address in UTF-8, zero-padded — carrying
//! the socket as its one file descriptor; a frame of zeros without one ends the list.
//!
//! [`Sockets`] is the registry both sides use: the listeners this LB owns (to hand over)
//! and the ones it inherited (to use instead of binding).

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Size of one frame.
const FRAME: usize = 64;
/// How long the exchange with the other LB may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("listen for hand-overs on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("exchange sockets with the other LB over {path}")]
    Exchange {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the other LB sent a bad frame")]
    BadFrame,
}

/// The listening sockets of this LB, by address.
#[derive(Debug, Default)]
pub struct Sockets {
    /// Duplicates of the sockets this LB listens on, ready to hand over.
    owned: Mutex<BTreeMap<SocketAddr, OwnedFd>>,
    /// Sockets received from the old LB, not yet taken up.
    inherited: Mutex<BTreeMap<SocketAddr, std::net::TcpListener>>,
}

impl Sockets {
    /// Records a socket this LB now listens on.
    pub fn register(&self, addr: SocketAddr, fd: BorrowedFd<'_>) {
        match fd.try_clone_to_owned() {
            Ok(fd) => {
                lock(&self.owned).insert(addr, fd);
            }
            Err(e) => warn!(%addr, error = %e, "cannot keep this listener for a hand-over"),
        }
    }

    /// Forgets a socket this LB no longer listens on.
    pub fn unregister(&self, addr: SocketAddr) {
        lock(&self.owned).remove(&addr);
    }

    /// The old LB's socket for `addr`, if it handed one over, ready for tokio.
    pub fn take_inherited(&self, addr: SocketAddr) -> Option<tokio::net::TcpListener> {
        let l = lock(&self.inherited).remove(&addr)?;
        match l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l))
        {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(%addr, error = %e, "cannot use the inherited listener");
                None
            }
        }
    }

    /// Addresses of the sockets inherited and not yet taken up.
    pub fn inherited(&self) -> Vec<SocketAddr> {
        lock(&self.inherited).keys().copied().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the sockets of the LB serving `path`, if one does; returns how many came.
pub async fn take(path: &Path, sockets: &Sockets) -> Result<usize, HandoverError> {
    let path_buf = path.to_path_buf();
    let err = |source| HandoverError::Exchange {
        path: path_buf.clone(),
        source,
    };
    let stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        // Nobody to take over from: a first start, or the old LB is gone.
        Err(_) => return Ok(0),
    };
    stream
        .set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(err)?;
    let received = tokio::task::spawn_blocking(move || receive(&stream))
        .await
        .map_err(|e| err(std::io::Error::other(e)))?
        .map_err(|e| match e {
            Receive::Io(source) => err(source),
            Receive::BadFrame => HandoverError::BadFrame,
        })?;
    let n = received.len();
    lock(&sockets.inherited).extend(received);
    Ok(n)
}

enum Receive {
    Io(std::io::Error),
    BadFrame,
}

fn receive(
    stream: &std::os::unix::net::UnixStream,
) -> Result<Vec<(SocketAddr, std::net::TcpListener)>, Receive> {
    let mut out = Vec::new();
    loop {
        let mut frame = [0u8; FRAME];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut frame)],
            &mut control,
            RecvFlags::WAITALL | RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| Receive::Io(e.into()))?;
        if got.bytes != FRAME {
            return Err(Receive::BadFrame);
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        let text = frame.split(|b| *b == 0).next().unwrap_or_default();
        if text.is_empty() {
            return Ok(out);
        }
        let addr: SocketAddr = std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(Receive::BadFrame)?;
        let fd = fds.pop().ok_or(Receive::BadFrame)?;
        out.push((addr, std::net::TcpListener::from(fd)));
    }
}

/// Serves hand-overs at `path` until `shutdown`. After handing its sockets to a new LB it
/// cancels `handed_over`, which stops this LB.
pub async fn serve(
    path: PathBuf,
    sockets: Arc<Sockets>,
    handed_over: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), HandoverError> {
    // A socket file left by an LB that crashed would make bind fail; a live LB's was taken
    // over just before this, so removing it is safe.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| HandoverError::Listen {
        path: path.clone(),
        source,
    })?;
    let mine = std::fs::metadata(&path).ok().map(|m| file_id(&m));
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => None,
        a = listener.accept() => Some(a),
    };
    // Free the path for the new LB's own hand-over socket, unless it already took it.
    if std::fs::metadata(&path).ok().map(|m| file_id(&m)) == mine {
        let _ = std::fs::remove_file(&path);
    }
    let Some(accepted) = accepted else {
        return Ok(());
    };
    let err = |source| HandoverError::Exchange {
        path: path.clone(),
        source,
    };
    let stream = accepted.map_err(err)?.0.into_std().map_err(err)?;
    stream.set_nonblocking(false).map_err(err)?;
    let owned: Vec<(SocketAddr, OwnedFd)> = lock(&sockets.owned)
        .iter()
        .filter_map(|(a, fd)| fd.try_clone().ok().map(|fd| (*a, fd)))
        .collect();
    let n = owned.len();
    tokio::task::spawn_blocking(move || send(&stream, &owned))
        .await
        .map_err(|e| err(std::io::Error::other(e)))?
        .map_err(err)?;
    info!(sockets = n, "handed listeners to a new LB; draining");
    handed_over.cancel();
    Ok(())
}

fn send(
    stream: &std::os::unix::net::UnixStream,
    sockets: &[(SocketAddr, OwnedFd)],
) -> std::io::Result<()> {
    for (addr, fd) in sockets {
        let mut frame = [0u8; FRAME];
        let text = addr.to_string();
        frame[..text.len()].copy_from_slice(text.as_bytes());
        let fds = [fd.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        sendmsg(
            stream,
            &[IoSlice::new(&frame)],
            &mut control,
            SendFlags::empty(),
        )?;
    }
    let mut control = SendAncillaryBuffer::default();
    sendmsg(
        stream,
        &[IoSlice::new(&[0u8; FRAME])],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_cross_over_and_keep_their_queued_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let old = Arc::new(Sockets::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        old.register(addr, listener.as_fd());
        let handed_over = CancellationToken::new();
        let server = tokio::spawn(serve(
            path.clone(),
            old.clone(),
            handed_over.clone(),
            CancellationToken::new(),
        ));
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // A client connects before the hand-over; the old LB never accepts it.
        let early = std::net::TcpStream::connect(addr).unwrap();
        let new = Sockets::default();
        assert_eq!(take(&path, &new).await.unwrap(), 1);
        server.await.unwrap().unwrap();
        assert!(handed_over.is_cancelled());
        drop(listener);
        drop(old);

        assert_eq!(new.inherited(), [addr]);
        let inherited = new.take_inherited(addr).unwrap();
        let (_, peer) = inherited.accept().await.unwrap();
        assert_eq!(peer, early.local_addr().unwrap());
        assert!(new.take_inherited(addr).is_none());

        // Nobody serving the path: nothing to take, not an error.
        assert_eq!(take(&path, &Sockets::default()).await.unwrap(), 0);
    }
}
