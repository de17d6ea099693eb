//! Waits for a container directory to change (the shim creating `attach.sock`, renaming
//! `exit` into place, the agent creating the directory itself) with inotify instead of a
//! sleep loop, so an attach or an exit code is seen the moment it exists rather than up to
//! a poll interval later.
//!
//! It only says "something changed, look again": callers keep their own check of the files
//! (the source of truth) and call [`DirWatch::changed`] between checks. The watch is set
//! up before the caller's first check, so nothing that happens after it is missed.

use std::io;
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use crate::sys::InotifyFd;

/// Changes in one directory, and its parent while the directory does not exist yet.
pub struct DirWatch {
    fd: AsyncFd<InotifyFd>,
    dir: PathBuf,
    /// Whether `dir` itself is watched (false until it exists).
    watching_dir: bool,
}

/// Entries appearing: created (a socket's bind, a directory) or renamed into place (the
/// temp-file + rename writes), and files finishing a plain write.
fn flags() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE
}

impl DirWatch {
    pub fn new(dir: &Path) -> io::Result<Self> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        if let Some(parent) = dir.parent() {
            // A missing parent is not an error: the directory then never appears and the
            // caller's deadline ends the wait.
            let _ = ino.add_watch(
                parent,
                AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
            );
        }
        let mut w = Self {
            fd: crate::sys::watch_inotify(ino)?,
            dir: dir.to_path_buf(),
            watching_dir: false,
        };
        w.watch_dir();
        Ok(w)
    }

    /// Starts watching the directory if it exists now; true if it just started.
    fn watch_dir(&mut self) -> bool {
        if !self.watching_dir {
            self.watching_dir = self.fd.get_ref().0.add_watch(&self.dir, flags()).is_ok();
            return self.watching_dir;
        }
        false
    }

    /// Returns after the next change (or at once if the directory just appeared, since its
    /// entries may predate the watch).
    pub async fn changed(&mut self) -> io::Result<()> {
        if self.watch_dir() {
            return Ok(());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|f| f.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(r) => {
                    r?;
                    self.watch_dir();
                    return Ok(());
                }
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_renamed_into_a_directory_created_later_is_seen() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c1");
        let mut w = DirWatch::new(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        w.changed().await.unwrap();
        // The directory's creation woke the watcher; now its entries are watched too.
        let tmp = root.path().join("exit.tmp");
        std::fs::write(&tmp, "0\n").unwrap();
        let writer = tokio::spawn({
            let dir = dir.clone();
            async move { std::fs::rename(tmp, dir.join("exit")).unwrap() }
        });
        // A generous guard so a missed event fails the test instead of hanging it.
        let seen = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while !dir.join("exit").exists() {
                w.changed().await.unwrap();
            }
        });
        seen.await.expect("the rename was never reported");
        writer.await.unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("exit")).unwrap(), "0\n");
    }
}
