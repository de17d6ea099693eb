//! Container logs in Docker's json-file format: one JSON object per line,
//! `{"log":"line\n","stream":"stdout","time":"2026-11-23T16:14:31.123456789Z"}`, in
//! `DIR/log.json`, rotated by size to `log.json.1` (newest) .. `log.json.N-1` (oldest).
//!
//! The shim writes ([`LineSplitter`], [`encode`], [`LogWriter`]); the agent and later
//! `rctl logs` read ([`read`], [`Follower`], [`last_line`]). An entry whose `log` does not
//! end in `\n` is a partial line: the container wrote more than [`MAX_LINE`] bytes without
//! a newline, or ended its output without one; readers join it with the next entry of the
//! same stream if they want whole lines.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Name of the current log file inside the container directory.
pub const LOG_FILE: &str = "log.json";
/// Docker's `max-size` default for rctl: one file is rotated once it would pass 10 MiB.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
/// Files kept, the current one included.
pub const DEFAULT_MAX_FILES: u32 = 3;
/// A line longer than this is written in pieces of this size (Docker's 16 KiB buffer).
pub const MAX_LINE: usize = 16 * 1024;

/// Which of the container's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Rotation limits; zeros in a task mean the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: u32,
}

impl Rotation {
    pub fn from_task(max_size: u64, max_files: u32) -> Self {
        Self {
            max_size: if max_size == 0 {
                DEFAULT_MAX_SIZE
            } else {
                max_size
            },
            max_files: if max_files == 0 {
                DEFAULT_MAX_FILES
            } else {
                max_files
            },
        }
    }
}

impl Default for Rotation {
    fn default() -> Self {
        Self::from_task(0, 0)
    }
}

// === impl LineSplitter ===

/// Cuts one stream's bytes into log lines: each complete line (with its `\n`), or a
/// [`MAX_LINE`] piece of a longer one. Bytes after the last newline wait for more input.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`; `emit` gets every line that is now complete.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8])) {
        while !data.is_empty() {
            let room = MAX_LINE - self.buf.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let line = &data[..=i];
                    if self.buf.is_empty() {
                        emit(line);
                    } else {
                        self.buf.extend_from_slice(line);
                        emit(&self.buf);
                        self.buf.clear();
                    }
                    data = &data[i + 1..];
                }
                None => {
                    self.buf.extend_from_slice(window);
                    data = &data[window.len()..];
                    if self.buf.len() == MAX_LINE {
                        emit(&self.buf);
                        self.buf.clear();
                    }
                }
            }
        }
    }

    /// The stream ended: emits what is left as a partial line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(&self.buf);
            self.buf.clear();
        }
    }
}

// === encoding ===

#[derive(Serialize)]
struct EntryRef<'a> {
    log: &'a str,
    stream: &'a str,
    time: &'a str,
}

/// One log line as a JSON object plus `\n`. Invalid UTF-8 becomes U+FFFD, as Docker's
/// encoder does; `\r` and control bytes are kept, JSON-escaped.
pub fn encode(line: &[u8], stream: Stream, time: SystemTime) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    let time = humantime::format_rfc3339_nanos(time).to_string();
    let mut out = serde_json::to_vec(&EntryRef {
        log: &text,
        stream: stream.as_str(),
        time: &time,
    })
    .unwrap_or_default();
    out.push(b'\n');
    out
}

/// A log entry as read back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Entry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

impl Entry {
    pub fn parse(line: &[u8]) -> Option<Self> {
        serde_json::from_slice(line).ok()
    }

    pub fn timestamp(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.time).ok()
    }
}

// === rotation ===

/// `log.json.N` for N ≥ 1; `log.json` itself for 0.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Whether writing `add` bytes to a file of `size` bytes must rotate first. A single
/// entry larger than the limit still goes into an empty file rather than nowhere.
pub fn must_rotate(size: u64, add: u64, max_size: u64) -> bool {
    size > 0 && size + add > max_size
}

/// Every file of the log, oldest first, that exists.
pub fn files(path: &Path, max_files: u32) -> Vec<PathBuf> {
    (0..max_files.max(1))
        .rev()
        .map(|n| rotated_path(path, n))
        .filter(|p| p.exists())
        .collect()
}

/// Appends encoded entries to the log, rotating by size. Write errors (a full disk) drop
/// the entry and count it; the container never waits on or dies of its log.
pub struct LogWriter {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    size: u64,
    /// The last write failed half-way: start the next one on a fresh line.
    torn: bool,
    /// Entries lost to write errors.
    pub dropped: u64,
}

impl LogWriter {
    pub fn open(path: PathBuf, rotation: Rotation) -> Self {
        let mut w = Self {
            path,
            rotation,
            file: None,
            size: 0,
            torn: false,
            dropped: 0,
        };
        w.reopen();
        w
    }

    fn reopen(&mut self) {
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
    }

    fn rotate(&mut self) {
        self.file = None;
        let keep = self.rotation.max_files.max(1);
        if keep == 1 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            for n in (1..keep).rev() {
                let _ =
                    std::fs::rename(rotated_path(&self.path, n - 1), rotated_path(&self.path, n));
            }
        }
        self.reopen();
    }

    /// Writes one encoded entry (from [`encode`]).
    pub fn write(&mut self, entry: &[u8]) {
        if must_rotate(self.size, entry.len() as u64, self.rotation.max_size) {
            self.rotate();
        }
        if self.file.is_none() {
            self.reopen();
        }
        let Some(f) = self.file.as_mut() else {
            self.dropped += 1;
            return;
        };
        let mut res = Ok(());
        if self.torn {
            res = f.write_all(b"\n");
        }
        if res.is_ok() {
            res = f.write_all(entry);
        }
        match res {
            Ok(()) => {
                self.torn = false;
                self.size += entry.len() as u64;
            }
            Err(_) => {
                self.torn = true;
                self.dropped += 1;
                self.size = f.metadata().map(|m| m.len()).unwrap_or(self.size);
            }
        }
    }
}

// === reading ===

/// What to read from a log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    /// Only the last N entries.
    pub tail: Option<usize>,
    /// Only entries at or after this time.
    pub since: Option<SystemTime>,
}

/// Parses every complete line of `data`; unreadable lines (a torn write) are skipped.
pub fn parse_lines(data: &[u8]) -> Vec<Entry> {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(Entry::parse)
        .collect()
}

/// Keeps the entries `filter` asks for, in order.
pub fn apply(entries: Vec<Entry>, filter: &Filter) -> Vec<Entry> {
    let mut out: Vec<Entry> = match filter.since {
        Some(t) => entries
            .into_iter()
            .filter(|e| e.timestamp().is_some_and(|ts| ts >= t))
            .collect(),
        None => entries,
    };
    if let Some(n) = filter.tail {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    out
}

/// The log's entries across its rotated files, oldest first.
pub fn read(path: &Path, max_files: u32, filter: &Filter) -> io::Result<Vec<Entry>> {
    let mut all = Vec::new();
    for f in files(path, max_files) {
        match std::fs::read(&f) {
            Ok(data) => all.extend(parse_lines(&data)),
            // Rotated away between listing and reading: its entries moved to the next name,
            // which was read already or is gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(apply(all, filter))
}

/// The last non-empty line the container wrote (either stream), trimmed and cut to 200
/// characters: the reason shown for a container that failed to start or crashed.
pub fn last_line(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut data = Vec::new();
    f.read_to_end(&mut data).ok()?;
    parse_lines(&data)
        .iter()
        .rev()
        .find(|e| !e.log.trim().is_empty())
        .map(|e| e.log.trim().chars().take(200).collect())
}

/// Follows a log as it grows and rotates (`rctl logs -f`): each [`Follower::poll`] returns
/// the entries written since the last one, also when the log rotated several times since.
pub struct Follower {
    path: PathBuf,
    max_files: u32,
    file: Option<File>,
    ino: u64,
    pending: Vec<u8>,
}

fn ino_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl Follower {
    /// Starts at the current end of the log (entries already there are read with [`read`]).
    pub fn from_end(path: PathBuf, max_files: u32) -> Self {
        let mut f = Self::from_start(path, max_files);
        if let Some(file) = f.file.as_mut() {
            let _ = file.seek(SeekFrom::End(0));
        }
        f
    }

    /// Starts at the beginning of the current file.
    pub fn from_start(path: PathBuf, max_files: u32) -> Self {
        let mut f = Self {
            path,
            max_files,
            file: None,
            ino: 0,
            pending: Vec::new(),
        };
        f.open_current();
        f
    }

    fn open_current(&mut self) {
        self.pending.clear();
        self.file = File::open(&self.path).ok();
        self.ino = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.ino())
            .unwrap_or(0);
    }

    fn drain(&mut self, out: &mut Vec<Entry>) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.read_to_end(&mut self.pending)?;
        if let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') {
            out.extend(parse_lines(&self.pending[..end]));
            self.pending.drain(..=end);
        }
        Ok(())
    }

    /// New entries since the last call (possibly none).
    pub fn poll(&mut self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.drain(&mut out)?;
        let Some(now) = ino_of(&self.path) else {
            return Ok(out);
        };
        if self.file.is_some() && now == self.ino {
            return Ok(out);
        }
        // Rotated: the writer may have appended to our file between the read above and its
        // rename, so finish it; then read the whole files rotated after it, oldest first.
        self.drain(&mut out)?;
        let mut newer = Vec::new();
        if self.file.is_some() {
            for n in 1..self.max_files.max(1) {
                let p = rotated_path(&self.path, n);
                match ino_of(&p) {
                    Some(i) if i != self.ino => newer.push(p),
                    _ => break,
                }
            }
        }
        for p in newer.iter().rev() {
            if let Ok(data) = std::fs::read(p) {
                out.extend(parse_lines(&data));
            }
        }
        self.open_current();
        self.drain(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut |l| out.push(l.to_vec()));
        }
        s.finish(&mut |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_are_joined_across_reads_and_a_partial_tail_is_flushed() {
        assert_eq!(
            split(&[b"a\nb", b"c\n", b"d"]),
            vec![b"a\n".to_vec(), b"bc\n".to_vec(), b"d".to_vec()]
        );
        assert!(split(&[b""]).is_empty());
    }

    #[test]
    fn long_lines_are_cut_at_16k() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input[..100], &input[100..]]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(out[1].len(), MAX_LINE);
        assert_eq!(out[2], b"xxxxx\n".to_vec());
        assert_eq!(out.concat(), input);
        // Exactly MAX_LINE bytes then a newline: the newline is its own entry.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        let out = split(&[&exact]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], b"\n".to_vec());
    }

    #[test]
    fn encoding_matches_docker_json_file() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let e = encode(b"hi \"there\"\r\n", Stream::Stderr, t);
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "{\"log\":\"hi \\\"there\\\"\\r\\n\",\"stream\":\"stderr\",\"time\":\"2023-11-14T22:13:20.000000005Z\"}\n"
        );
        let back = Entry::parse(&encode(b"\xff\xfeok\n", Stream::Stdout, t)).unwrap();
        assert_eq!(back.log, "\u{fffd}\u{fffd}ok\n");
        assert_eq!(back.stream, "stdout");
        assert_eq!(back.timestamp(), Some(t));
    }

    #[test]
    fn rotation_decision() {
        assert!(!must_rotate(0, 100, 10), "an empty file takes any entry");
        assert!(!must_rotate(5, 5, 10));
        assert!(must_rotate(6, 5, 10));
        assert_eq!(
            rotated_path(Path::new("/d/log.json"), 2),
            PathBuf::from("/d/log.json.2")
        );
        assert_eq!(
            Rotation::from_task(0, 0),
            Rotation {
                max_size: DEFAULT_MAX_SIZE,
                max_files: DEFAULT_MAX_FILES
            }
        );
    }

    fn entry(i: usize) -> Vec<u8> {
        encode(
            format!("line {i}\n").as_bytes(),
            Stream::Stdout,
            UNIX_EPOCH + Duration::from_secs(i as u64),
        )
    }

    #[test]
    fn writer_rotates_and_reader_reads_across_files() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(LOG_FILE);
        let one = entry(0).len() as u64;
        let rot = Rotation {
            max_size: one * 3,
            max_files: 3,
        };
        let mut w = LogWriter::open(path.clone(), rot);
        for i in 0..10 {
            w.write(&entry(i));
        }
        assert_eq!(w.dropped, 0);
        // 3 per file, 3 files: [0,1,2] rotated out, [3,4,5] [6,7,8] [9] kept.
        assert_eq!(files(&path, 3).len(), 3);
        assert!(!rotated_path(&path, 3).exists());
        let all = read(&path, 3, &Filter::default()).unwrap();
        let logs: Vec<&str> = all.iter().map(|e| e.log.as_str()).collect();
        assert_eq!(logs.first(), Some(&"line 3\n"));
        assert_eq!(logs.last(), Some(&"line 9\n"));
        assert_eq!(logs.len(), 7);
        let tail = read(
            &path,
            3,
            &Filter {
                tail: Some(2),
                since: None,
            },
        )
        .unwrap();
        assert_eq!(tail[0].log, "line 8\n");
        let since = read(
            &path,
            3,
            &Filter {
                tail: None,
                since: Some(UNIX_EPOCH + Duration::from_secs(7)),
            },
        )
        .unwrap();
        assert_eq!(since.len(), 3);
        assert_eq!(last_line(&path).as_deref(), Some("line 9"));
    }

    #[test]
    fn a_full_disk_drops_and_counts_entries() {
        // /dev/full fails every write with ENOSPC.
        let mut w = LogWriter::open(PathBuf::from("/dev/full"), Rotation::default());
        for i in 0..3 {
            w.write(&entry(i));
        }
        assert_eq!(w.dropped, 3);
        assert!(Path::new("/dev/full").exists(), "never rotated away");
    }

    #[test]
    fn a_torn_line_is_skipped_and_the_next_entry_survives() {
        let mut data = entry(1);
        data.extend_from_slice(b"{\"log\":\"half");
        data.extend_from_slice(b"\n");
        data.extend_from_slice(&entry(2));
        let got = parse_lines(&data);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].log, "line 2\n");
    }

    #[test]
    fn follower_sees_appends_and_survives_rotation() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(LOG_FILE);
        let one = entry(0).len() as u64;
        let mut w = LogWriter::open(
            path.clone(),
            Rotation {
                max_size: one * 2,
                max_files: 3,
            },
        );
        w.write(&entry(0));
        let mut f = Follower::from_end(path.clone(), 3);
        assert!(f.poll().unwrap().is_empty());
        let mut seen = Vec::new();
        for i in 1..8 {
            w.write(&entry(i));
            if i % 3 == 0 {
                seen.extend(f.poll().unwrap());
            }
        }
        seen.extend(f.poll().unwrap());
        let logs: Vec<String> = seen.into_iter().map(|e| e.log).collect();
        let want: Vec<String> = (1..8).map(|i| format!("line {i}\n")).collect();
        assert_eq!(logs, want);
    }

    #[test]
    fn a_missing_log_reads_as_empty() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(LOG_FILE);
        assert!(read(&path, 3, &Filter::default()).unwrap().is_empty());
        assert_eq!(last_line(&path), None);
        let mut f = Follower::from_end(path.clone(), 3);
        assert!(f.poll().unwrap().is_empty());
        std::fs::write(&path, entry(4)).unwrap();
        assert_eq!(f.poll().unwrap().len(), 1);
    }
}
