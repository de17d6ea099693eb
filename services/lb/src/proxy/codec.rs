//! The HTTP/1 codec and the proxy's header rules, pure functions over bytes and header
//! maps: which headers are hop-by-hop (one list, for both data paths), the forwarding
//! headers, and for the fast path ([`super::h1`]) reading and rewriting request and
//! response heads with httparse and following chunked framing to find where a body ends.
//! Nothing here does I/O.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, GetAll, HeaderMap, HeaderName, HeaderValue};

/// Largest request head (request line and headers) accepted; a bigger one is answered 431.
/// Between nginx's 8 KiB and HAProxy's 16 KiB buffers, rounded up for large cookies.
pub const MAX_HEADER_SIZE: usize = 32 * 1024;

/// Most header lines in a head the fast path parses; more go to hyper.
const MAX_HEADERS: usize = 64;

// === hop-by-hop headers ===

/// Headers that describe one connection, not the message, and so must not be forwarded
/// (RFC 9110 §7.6.1), plus the widespread non-standard `Proxy-Connection`. Lower case.
const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// [`HOP_BY_HOP_NAMES`] as header names, for header maps (standard names compare as
/// enum tags, not strings).
const HOP_BY_HOP: [HeaderName; 9] = [
    HeaderName::from_static(HOP_BY_HOP_NAMES[0]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[1]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[2]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[3]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[4]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[5]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[6]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[7]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[8]),
];

/// Whether a header name as received (any case) is hop-by-hop.
fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP_NAMES
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether a comma-separated header value lists `token` (any case).
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether the `Connection` values name `name`, which is then hop-by-hop too.
fn named_by(connection: &[&[u8]], name: &str) -> bool {
    connection.iter().any(|v| lists(v, name))
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // This runs on every request and every response. Most requests carry no hop-by-hop
    // header and most responses just `Connection: keep-alive`, so find the few names
    // present with passes over the map's keys and remove only those, rather than parse
    // `Connection` into new names and hash every hop-by-hop name for every message.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // `Connection` goes last: the other passes read the names it lists.
    loop {
        let doomed = {
            let named = headers.get_all(header::CONNECTION);
            headers
                .keys()
                .find(|k| {
                    *k != header::CONNECTION
                        && (HOP_BY_HOP.contains(k) || connection_names(&named, k))
                })
                .cloned()
        };
        match doomed {
            Some(name) => {
                headers.remove(&name);
            }
            None => break,
        }
    }
    headers.remove(header::CONNECTION);
}

/// Whether the `Connection` header values list `name` (comma-separated, any case).
fn connection_names(values: &GetAll<'_, HeaderValue>, name: &HeaderName) -> bool {
    values.iter().any(|v| lists(v.as_bytes(), name.as_str()))
}

// === forwarding headers ===

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address as an `X-Forwarded-For` value: formatted once per connection,
/// since every request on it carries the same one.
pub(crate) fn forwarded_for(client: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(client.to_string()))
        .expect("an IP address is a valid header value")
}

/// Appends `client` (from [`forwarded_for`]) to `X-Forwarded-For`, keeping what earlier
/// proxies put there, and sets `X-Forwarded-Proto` (`"http"` or `"https"`).
pub(crate) fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, proto: &'static str) {
    let mut earlier = headers.get_all(&XFF).iter().peekable();
    if earlier.peek().is_none() {
        // The common case: the first proxy. A clone of the per-connection value is a
        // reference count, not a copy.
        headers.insert(XFF, client.clone());
    } else {
        let mut chain = Vec::with_capacity(64);
        for v in earlier {
            chain.extend_from_slice(v.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(client.as_bytes());
        // Bytes of valid header values joined by ", " are a valid header value.
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(chain)) {
            headers.insert(XFF, v);
        }
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
}

// === request heads ===

/// What the fast path needs from a client's request head, or why it is not one of ours.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// A plain request: the head is `len` bytes; `upstream` is the head to send a backend
    /// (hop-by-hop headers dropped, forwarding headers set, Host ensured).
    Plain {
        len: usize,
        head: bool,
        close: bool,
        /// Where the sticky key is, when the route asked: the request's headers.
        sticky: Option<http::HeaderMap>,
    },
    /// Not complete yet.
    Partial,
    /// Anything else: hyper's.
    Other,
}

/// Parses the request head at the start of `buf` and, for a plain GET or HEAD, writes the
/// head to send upstream to `up` (cleared first). `forwarded_for` is the client's address;
/// `with_sticky` asks for the headers as a map (for a sticky canary's key).
pub(crate) fn parse_request(
    buf: &[u8],
    forwarded_for: &[u8],
    proto: &str,
    with_sticky: bool,
    up: &mut Vec<u8>,
) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER_SIZE => return Head::Partial,
        // Malformed, too many headers, too big: hyper answers those (400, 431).
        _ => return Head::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Head::Other;
    };
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Head::Other,
    };
    if !path.starts_with('/') {
        return Head::Other;
    }
    let mut connection: [&[u8]; 4] = [b""; 4];
    let mut n_connection = 0;
    let mut xff: [&[u8]; 4] = [b""; 4];
    let mut n_xff = 0;
    let mut host = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return Head::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Head::Other;
        } else if name.eq_ignore_ascii_case("connection") {
            if n_connection == connection.len() {
                return Head::Other;
            }
            connection[n_connection] = h.value;
            n_connection += 1;
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            if n_xff == xff.len() {
                return Head::Other;
            }
            xff[n_xff] = h.value;
            n_xff += 1;
        }
    }
    if !host {
        // HTTP/1.1 requires one; hyper's path fills it in.
        return Head::Other;
    }
    let connection = &connection[..n_connection];
    let close = connection.iter().any(|v| lists(v, "close"));

    up.clear();
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    up.extend_from_slice(path.as_bytes());
    up.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || hop_by_hop(name)
            || named_by(connection, name)
        {
            continue;
        }
        up.extend_from_slice(name.as_bytes());
        up.extend_from_slice(b": ");
        up.extend_from_slice(h.value);
        up.extend_from_slice(b"\r\n");
    }
    // Earlier proxies' entries first, then the client's address, on one line.
    up.extend_from_slice(b"x-forwarded-for: ");
    for v in &xff[..n_xff] {
        up.extend_from_slice(v);
        up.extend_from_slice(b", ");
    }
    up.extend_from_slice(forwarded_for);
    up.extend_from_slice(b"\r\nx-forwarded-proto: ");
    up.extend_from_slice(proto.as_bytes());
    up.extend_from_slice(b"\r\n");
    up.extend_from_slice(b"\r\n");

    let sticky = with_sticky.then(|| {
        let mut map = http::HeaderMap::new();
        for h in req.headers.iter() {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
        map
    });
    Head::Plain {
        len,
        head,
        close,
        sticky,
    }
}

// === response heads ===

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes (no length, not chunked).
    Close,
}

/// A backend's response head, ready for the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RespHead {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// Whether the backend connection may carry another request after this answer.
    pub reusable: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParsedResp {
    Head(RespHead),
    /// An interim 1xx answer of this many bytes: skipped.
    Interim(usize),
    Partial,
    Invalid,
}

/// Parses a backend's response head to a request (`head`: a HEAD request) and writes the
/// head for the client to `out` (cleared first): hop-by-hop headers dropped,
/// `Transfer-Encoding: chunked` kept when the body is forwarded chunked, `Connection:
/// close` when `close_client`, or when the body ends with the backend's connection.
pub(crate) fn parse_response(
    buf: &[u8],
    head: bool,
    close_client: bool,
    out: &mut Vec<u8>,
) -> ParsedResp {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER_SIZE => return ParsedResp::Partial,
        _ => return ParsedResp::Invalid,
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return ParsedResp::Invalid;
    };
    if status == 101 || !(100..=999).contains(&status) {
        // Nothing asked to switch protocols on this path.
        return ParsedResp::Invalid;
    }
    if status < 200 {
        return ParsedResp::Interim(len);
    }
    let mut connection: [&[u8]; 4] = [b""; 4];
    let mut n_connection = 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return ParsedResp::Invalid;
            };
            if length.is_some_and(|l| l != n) {
                return ParsedResp::Invalid;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if n_connection == connection.len() {
                return ParsedResp::Invalid;
            }
            connection[n_connection] = h.value;
            n_connection += 1;
        }
    }
    let connection = &connection[..n_connection];
    let framing = if head || status == 204 || status == 304 {
        Framing::Empty
    } else if encoded {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let reusable =
        version == 1 && framing != Framing::Close && !connection.iter().any(|v| lists(v, "close"));

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // 100..=999: three digits.
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if hop_by_hop(h.name) || named_by(connection, h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        // Forwarded with its chunked framing as received.
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close_client || framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ParsedResp::Head(RespHead {
        len,
        status,
        framing,
        reusable,
    })
}

// === chunked framing ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size { size: u64, digits: bool },
    Ext { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    FinalLf,
}

/// Follows chunked framing (RFC 9112 §7.1) through bytes forwarded as they are, to tell
/// where the message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunked(ChunkState);

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadChunk;

impl Default for Chunked {
    fn default() -> Self {
        Self(ChunkState::Size {
            size: 0,
            digits: false,
        })
    }
}

impl Chunked {
    /// Reads `bytes`; `Ok(Some(n))` when the message ends after its first `n` bytes.
    pub(crate) fn advance(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.0 = match self.0 {
                Data(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.0 = if take == n { DataCr } else { Data(n - take) };
                    continue;
                }
                Size { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(d))
                            .ok_or(BadChunk)?;
                        Size { size, digits: true }
                    }
                    _ if !digits => return Err(BadChunk),
                    b';' | b' ' | b'\t' => Ext { size },
                    b'\r' => SizeLf { size },
                    b'\n' => Self::after_size(size),
                    _ => return Err(BadChunk),
                },
                Ext { size } => match b {
                    b'\r' => SizeLf { size },
                    b'\n' => Self::after_size(size),
                    _ => Ext { size },
                },
                SizeLf { size } if b == b'\n' => Self::after_size(size),
                DataCr if b == b'\r' => DataLf,
                DataCr | DataLf if b == b'\n' => Size {
                    size: 0,
                    digits: false,
                },
                TrailerStart => match b {
                    b'\r' => FinalLf,
                    b'\n' => return Ok(Some(i + 1)),
                    _ => TrailerLine,
                },
                TrailerLine if b == b'\n' => TrailerStart,
                TrailerLine => TrailerLine,
                FinalLf if b == b'\n' => return Ok(Some(i + 1)),
                _ => return Err(BadChunk),
            };
            i += 1;
        }
        Ok(None)
    }

    fn after_size(size: u64) -> ChunkState {
        if size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data(size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &[u8], sticky: bool) -> (Head, String) {
        let mut up = Vec::new();
        let head = parse_request(raw, b"10.0.0.1", "http", sticky, &mut up);
        (head, String::from_utf8(up).unwrap())
    }

    #[test]
    fn a_plain_get_goes_upstream_without_hop_by_hop_headers() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: web\r\nConnection: keep-alive, X-Private\r\n\
                    X-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 198.18.0.1\r\n\
                    X-Forwarded-Proto: https\r\nAccept: */*\r\n\r\nGET /next";
        let (head, up) = request(raw, false);
        let len = raw.len() - b"GET /next".len();
        assert_eq!(
            head,
            Head::Plain {
                len,
                head: false,
                close: false,
                sticky: None
            }
        );
        assert_eq!(
            up,
            "GET /a?b=1 HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\
             x-forwarded-for: 198.18.0.1, 10.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn head_and_close_are_noted_and_sticky_gets_the_headers() {
        let (head, _) = request(
            b"HEAD / HTTP/1.1\r\nhost: w\r\nconnection: Close\r\ncookie: k=v\r\n\r\n",
            true,
        );
        let Head::Plain {
            head,
            close,
            sticky,
            ..
        } = head
        else {
            panic!("not plain: {head:?}");
        };
        assert!(head && close);
        assert_eq!(sticky.unwrap()["cookie"], "k=v");
    }

    #[test]
    fn anything_but_a_plain_bodiless_get_or_head_is_left_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: w\r\nContent-Length: 0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\n\r\nabc",
            b"GET / HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: w\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: w\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: w\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET http://w/ HTTP/1.1\r\nHost: w\r\n\r\n",
            b"CONNECT w:443 HTTP/1.1\r\nHost: w\r\n\r\n",
            b"THIS IS NOT HTTP\r\n\r\n",
        ] {
            assert_eq!(
                request(raw, false).0,
                Head::Other,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: w\r\nX-Slow: ", false).0,
            Head::Partial
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: w\r\nX: {}",
            "a".repeat(MAX_HEADER_SIZE)
        );
        assert_eq!(request(big.as_bytes(), false).0, Head::Other);
        // A GET may say its empty body's length.
        let (head, _) = request(
            b"GET / HTTP/1.1\r\nHost: w\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(matches!(head, Head::Plain { .. }));
    }

    fn response(raw: &[u8], head: bool, close: bool) -> (ParsedResp, String) {
        let mut out = Vec::new();
        let parsed = parse_response(raw, head, close, &mut out);
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_and_reuse_follow_the_head() {
        let cases: [(&[u8], bool, Framing, bool); 7] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Length(3),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
                false,
                Framing::Length(3),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Length(3),
                false,
            ),
        ];
        for (raw, head, framing, reusable) in cases {
            let (parsed, _) = response(raw, head, false);
            let ParsedResp::Head(r) = parsed else {
                panic!("{parsed:?}");
            };
            assert_eq!(
                (r.framing, r.reusable),
                (framing, reusable),
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(r.len, raw.len());
        }
    }

    #[test]
    fn the_client_gets_the_head_without_hop_by_hop_headers() {
        let (_, out) = response(
            b"HTTP/1.1 200 Fine\r\nServer: b\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
              Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 Fine\r\nServer: b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let (_, out) = response(b"HTTP/1.0 404 Nope\r\n\r\n", false, true);
        assert_eq!(out, "HTTP/1.1 404 Nope\r\nconnection: close\r\n\r\n");
    }

    #[test]
    fn interim_partial_and_bad_response_heads() {
        let (parsed, _) = response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", false, false);
        assert_eq!(parsed, ParsedResp::Interim(25));
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\nServ", false, false).0,
            ParsedResp::Partial
        );
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            assert_eq!(response(bad, false, false).0, ParsedResp::Invalid);
        }
    }

    #[test]
    fn chunked_framing_ends_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole, and fed one byte at a time.
        assert_eq!(Chunked::default().advance(body), Ok(Some(end)));
        let mut c = Chunked::default();
        for (i, b) in body.iter().enumerate() {
            match c.advance(std::slice::from_ref(b)) {
                Ok(None) => assert!(i < end - 1),
                Ok(Some(1)) => {
                    assert_eq!(i, end - 1);
                    break;
                }
                other => panic!("at {i}: {other:?}"),
            }
        }
        assert_eq!(Chunked::default().advance(b"0\r\n\r\n"), Ok(Some(5)));
        assert_eq!(Chunked::default().advance(b"A\r\n0123456789"), Ok(None));
        assert_eq!(Chunked::default().advance(b"x\r\n"), Err(BadChunk));
        assert_eq!(Chunked::default().advance(b"1\r\nab"), Err(BadChunk));
        assert_eq!(
            Chunked::default().advance(b"ffffffffffffffffff\r\n"),
            Err(BadChunk)
        );
    }

    #[test]
    fn strips_hop_by_hop_headers_and_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::HOST, HeaderValue::from_static("web"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host", "content-length"]);
    }

    #[test]
    fn strips_names_from_every_connection_header_line_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static(" X-A ,x-b"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert("x-c", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-c"]);

        // nginx's usual answer: only Connection goes.
        let mut h = HeaderMap::new();
        h.insert(header::SERVER, HeaderValue::from_static("nginx"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["server", "content-length"]);
    }

    #[test]
    fn forwarded_headers_append_to_the_chain() {
        let mut h = HeaderMap::new();
        set_forwarded(
            &mut h,
            &forwarded_for("198.18.0.1".parse().unwrap()),
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "198.18.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        set_forwarded(&mut h, &forwarded_for("::1".parse().unwrap()), "https");
        assert_eq!(h["x-forwarded-for"], "198.18.0.1, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
