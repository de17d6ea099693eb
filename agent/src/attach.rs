//! The attach protocol between a client (the agent's gRPC layer for `rctl attach`/`run -it`)
//! and a container's shim, over the shim's unix socket `DIR/attach.sock` (mode 0600).
//!
//! Client → shim, always framed: `[kind: u8][len: u32 BE][payload]` with kind
//! [`STDIN`] (bytes for the container's stdin), [`RESIZE`] (`rows: u16 BE, cols: u16 BE`,
//! applied to the pty) or [`CLOSE_STDIN`] (EOF on the container's stdin, e.g. `echo x |
//! rctl run -i`).
//!
//! Shim → client: the container's output from the moment of attach. With a TTY the raw
//! bytes of the pty; without one Docker's stdcopy framing, `[stream: u8][0,0,0][len: u32
//! BE][payload]` with stream 1 = stdout, 2 = stderr. The shim closes the connection when the
//! container has exited (its exit code is in the container's `exit` file).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use crate::logs::Stream;
use crate::runtime::state::ContainerDir;

pub const STDIN: u8 = 0;
pub const RESIZE: u8 = 1;
pub const CLOSE_STDIN: u8 = 2;
/// Larger client frames are a protocol error: the shim drops that client.
pub const MAX_FRAME: usize = 1 << 20;

/// A decoded client → shim message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Stdin(Vec<u8>),
    Resize { rows: u16, cols: u16 },
    CloseStdin,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown attach frame kind {0}")]
    Kind(u8),
    #[error("attach frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("resize frame needs 4 bytes, got {0}")]
    Resize(usize),
}

pub fn encode_request(r: &Request) -> Vec<u8> {
    let (kind, payload): (u8, Vec<u8>) = match r {
        Request::Stdin(d) => (STDIN, d.clone()),
        Request::Resize { rows, cols } => {
            let mut p = rows.to_be_bytes().to_vec();
            p.extend_from_slice(&cols.to_be_bytes());
            (RESIZE, p)
        }
        Request::CloseStdin => (CLOSE_STDIN, Vec::new()),
    };
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Takes the first complete request off the front of `buf`; `Ok(None)` means more bytes
/// are needed.
pub fn decode_request(buf: &mut Vec<u8>) -> Result<Option<Request>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let kind = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if !matches!(kind, STDIN | RESIZE | CLOSE_STDIN) {
        return Err(FrameError::Kind(kind));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let payload: Vec<u8> = buf.drain(..5 + len).skip(5).collect();
    Ok(Some(match kind {
        STDIN => Request::Stdin(payload),
        RESIZE => {
            if payload.len() != 4 {
                return Err(FrameError::Resize(payload.len()));
            }
            Request::Resize {
                rows: u16::from_be_bytes([payload[0], payload[1]]),
                cols: u16::from_be_bytes([payload[2], payload[3]]),
            }
        }
        _ => Request::CloseStdin,
    }))
}

/// Non-TTY output for a client: Docker's 8-byte stdcopy header, then the bytes.
pub fn encode_output(stream: Stream, data: &[u8]) -> Vec<u8> {
    let id = match stream {
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    };
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&[id, 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Takes the first complete non-TTY output frame off the front of `buf`.
pub fn decode_output(buf: &mut Vec<u8>) -> Option<(Stream, Vec<u8>)> {
    if buf.len() < 8 {
        return None;
    }
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if buf.len() < 8 + len {
        return None;
    }
    let stream = if buf[0] == 2 {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    let data = buf.drain(..8 + len).skip(8).collect();
    Some((stream, data))
}

/// A connection to a container's shim.
pub struct Attach {
    stream: UnixStream,
}

/// Attaches to the container in `dir` (it must be running and have a shim).
pub fn connect(dir: &ContainerDir) -> io::Result<Attach> {
    Ok(Attach {
        stream: UnixStream::connect(dir.attach_sock())?,
    })
}

impl Attach {
    pub fn send(&mut self, r: &Request) -> io::Result<()> {
        self.stream.write_all(&encode_request(r))
    }

    pub fn stdin(&mut self, data: &[u8]) -> io::Result<()> {
        self.send(&Request::Stdin(data.to_vec()))
    }

    pub fn resize(&mut self, rows: u16, cols: u16) -> io::Result<()> {
        self.send(&Request::Resize { rows, cols })
    }

    pub fn close_stdin(&mut self) -> io::Result<()> {
        self.send(&Request::CloseStdin)
    }

    /// Reads output (raw for a TTY, stdcopy frames otherwise); 0 means the container ended.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }

    /// The socket itself, e.g. for `tokio::net::UnixStream::from_std` or a read timeout.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn into_std(self) -> UnixStream {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_across_partial_reads() {
        let reqs = [
            Request::Stdin(b"echo hi\n".to_vec()),
            Request::Resize {
                rows: 40,
                cols: 132,
            },
            Request::CloseStdin,
        ];
        let wire: Vec<u8> = reqs.iter().flat_map(encode_request).collect();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in wire {
            buf.push(b);
            while let Some(r) = decode_request(&mut buf).unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, reqs);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut buf = vec![9, 0, 0, 0, 0];
        assert_eq!(decode_request(&mut buf), Err(FrameError::Kind(9)));
        let mut buf = vec![STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_request(&mut buf),
            Err(FrameError::TooLarge(_))
        ));
        let mut buf = vec![RESIZE, 0, 0, 0, 1, 7];
        assert_eq!(decode_request(&mut buf), Err(FrameError::Resize(1)));
    }

    #[test]
    fn output_frames_are_docker_stdcopy() {
        let wire = encode_output(Stream::Stderr, b"oops\n");
        assert_eq!(&wire[..8], &[2, 0, 0, 0, 0, 0, 0, 5]);
        let mut buf = wire.clone();
        buf.extend_from_slice(&encode_output(Stream::Stdout, b"ok")[..3]);
        assert_eq!(
            decode_output(&mut buf),
            Some((Stream::Stderr, b"oops\n".to_vec()))
        );
        assert_eq!(decode_output(&mut buf), None);
    }
}
