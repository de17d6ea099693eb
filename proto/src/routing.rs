//! What rctl-lb reads from a service's spec: the protocol it proxies (`port.protocol`), the
//! PROXY protocol it sends to endpoints (`port.proxy_protocol`) and where a sticky canary
//! finds a request's key (`sticky`). One rule for the CLI (checking a service file), the
//! scheduler (checking a spec at the API) and the LB (building its routing table), so a
//! spec the CLI and the scheduler accept is one the LB can serve.

use http::header::{self, HeaderMap, HeaderName};

/// How the load balancer speaks to clients and endpoints of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (and HTTP/2 by ALPN under TLS), proxied per request (L7).
    Http,
    /// Raw TCP, proxied per connection (L4).
    Tcp,
}

impl Protocol {
    /// The accepted values, for messages: `"http" or "tcp"`.
    pub const ONE_OF: &'static str = "\"http\" or \"tcp\"";

    /// Parses `spec.port.protocol`; empty means HTTP, the documented default.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "http" => Some(Self::Http),
            "tcp" => Some(Self::Tcp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }
}

/// The PROXY protocol header rctl-lb sends to a service's endpoints on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// None: endpoints see rctl-lb's address.
    Off,
    /// Version 2 (binary), which carries the client's address.
    V2,
}

impl ProxyProtocol {
    /// Parses `spec.port.proxy_protocol`: empty (off) or `v2`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" => Some(Self::Off),
            "v2" => Some(Self::V2),
            _ => None,
        }
    }
}

/// Where a sticky canary finds a request's key (`ServiceSpec.sticky`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("sticky {0:?}: want \"header:NAME\" or \"cookie:NAME\"")]
pub struct StickyError(pub String);

impl Sticky {
    /// Parses `header:NAME` or `cookie:NAME`. Both names are HTTP tokens (RFC 9110 for a
    /// header name, RFC 6265 for a cookie name), so a cookie name never holds the `=`, `;`
    /// or spaces that would make it unfindable in a `Cookie` header.
    pub fn parse(s: &str) -> Result<Self, StickyError> {
        let bad = || StickyError(s.to_string());
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if !is_token(name) {
            return Err(bad());
        }
        match kind {
            "header" => HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .map_err(|_| bad()),
            "cookie" => Ok(Self::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }

    /// The request's key, if it carries one (a non-empty value).
    pub fn key<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        let value = match self {
            Self::Header(name) => headers.get(name).map(|v| v.as_bytes())?,
            Self::Cookie(name) => headers
                .get_all(header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii_start();
                    let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
                    (k == name.as_bytes()).then(|| &v[1..])
                })?,
        };
        (!value.is_empty()).then_some(value)
    }
}

/// RFC 9110 `token`: one or more of `tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn protocols_are_http_by_default_or_tcp() {
        assert_eq!(Protocol::parse(""), Some(Protocol::Http));
        assert_eq!(Protocol::parse("http"), Some(Protocol::Http));
        assert_eq!(Protocol::parse("tcp"), Some(Protocol::Tcp));
        for bad in ["udp", "HTTP", "h2", " tcp"] {
            assert_eq!(Protocol::parse(bad), None, "{bad}");
        }
        for p in [Protocol::Http, Protocol::Tcp] {
            assert_eq!(Protocol::parse(p.as_str()), Some(p));
            assert!(Protocol::ONE_OF.contains(&format!("\"{}\"", p.as_str())));
        }
    }

    #[test]
    fn proxy_protocol_is_off_or_v2() {
        assert_eq!(ProxyProtocol::parse(""), Some(ProxyProtocol::Off));
        assert_eq!(ProxyProtocol::parse("v2"), Some(ProxyProtocol::V2));
        for bad in ["v1", "V2", "2", "on"] {
            assert_eq!(ProxyProtocol::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sticky_keys_come_from_a_header_or_a_cookie() {
        let by_header = Sticky::parse("header:X-Canary-Key").unwrap();
        let by_cookie = Sticky::parse("cookie:uid").unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(by_header.key(&h), None);
        h.insert("x-canary-key", HeaderValue::from_static("alice"));
        assert_eq!(by_header.key(&h), Some(&b"alice"[..]));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; uid=bob; z=2"),
        );
        assert_eq!(by_cookie.key(&h), Some(&b"bob"[..]));
        h.insert(header::COOKIE, HeaderValue::from_static("xuid=bob; uid="));
        assert_eq!(by_cookie.key(&h), None);
        for bad in [
            "",
            "header:",
            "header:bad name",
            "cookie:",
            "query:k",
            "cookie:a=b",
        ] {
            assert!(Sticky::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sticky_names_are_tokens_for_headers_and_cookies_alike() {
        // rctl-lb once took any cookie name without `;`, `=`, `,` or a space, while the
        // service file took only tokens: a spec written by hand (or by another client)
        // could get a sticky canary `rctl apply` refuses. Now both read this rule.
        for good in [
            "header:X-Canary-Key",
            "header:x_user.id",
            "cookie:uid",
            "cookie:__Host-session",
            "cookie:a!#$%&'*+-.^_`|~z",
        ] {
            assert!(Sticky::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "cookie:a/b",
            "cookie:a:b",
            "cookie:a\"b",
            "cookie:(uid)",
            "cookie:a\tb",
            "cookie:üid",
            "cookie:a@b",
            "cookie:a?b",
            "header:a:b",
            "header:üid",
            "Header:uid",
            "COOKIE:uid",
            "cookie",
        ] {
            assert_eq!(
                Sticky::parse(bad),
                Err(StickyError(bad.to_string())),
                "{bad}"
            );
        }
    }
}
