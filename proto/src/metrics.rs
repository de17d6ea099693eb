//! Prometheus metrics without a metrics crate: [`Text`] writes the text exposition format
//! (every binary's `/metrics` body), and [`serve`] answers HTTP/1.x GETs with it on
//! `--metrics-addr`.

use std::fmt::{self, Display, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A metric family's type, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// A `/metrics` body in the text exposition format (version 0.0.4), written family by
/// family: [`Text::family`] for the `# HELP` and `# TYPE` lines, then [`Text::sample`] for
/// each of its samples.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the family `name`: `# HELP name help` (when `help` is not empty), then
    /// `# TYPE name kind`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        if !help.is_empty() {
            let _ = writeln!(self.out, "# HELP {name} {help}");
        }
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample: `name{k="v",...} value`, without braces when there are no labels.
    /// Label values are escaped as the format asks (`\\`, `\"`, `\n`).
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &dyn Display)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        for (i, (key, v)) in labels.iter().enumerate() {
            self.out.push(if i == 0 { '{' } else { ',' });
            self.out.push_str(key);
            self.out.push_str("=\"");
            let _ = write!(Escaped(&mut self.out), "{v}");
            self.out.push('"');
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// The body written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Writes a label value into the body with `\`, `"` and newlines escaped.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// Reads until the end of an HTTP request head (a blank line), EOF, or 8 KiB; the content
/// is ignored, since every path gets the same answer.
async fn read_head(sock: &mut tokio::net::TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < 8192 {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
    }
}

/// Serves `render()` at any path until `shutdown` completes.
pub async fn serve<F>(
    addr: SocketAddr,
    render: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let render = Arc::new(render);
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
        };
        let render = render.clone();
        tokio::spawn(async move {
            // Read the whole request head before answering: closing with unread bytes would
            // reset the connection under a client still writing its request.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), read_head(&mut sock)).await;
            let body = render();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_are_written_in_the_text_format() {
        let mut t = Text::new();
        t.family("up", Kind::Gauge, "")
            .sample("up", &[], 1)
            .family("hits_total", Kind::Counter, "Hits, by service and class.")
            .sample(
                "hits_total",
                &[("service", &"web"), ("class", &"2xx")],
                7u64,
            )
            .family("latency_seconds", Kind::Summary, "Latency.")
            .sample(
                "latency_seconds",
                &[("revision", &3u64), ("quantile", &0.99)],
                0.25,
            );
        assert_eq!(
            t.finish(),
            "# TYPE up gauge\nup 1\n\
             # HELP hits_total Hits, by service and class.\n# TYPE hits_total counter\n\
             hits_total{service=\"web\",class=\"2xx\"} 7\n\
             # HELP latency_seconds Latency.\n# TYPE latency_seconds summary\n\
             latency_seconds{revision=\"3\",quantile=\"0.99\"} 0.25\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut t = Text::new();
        t.sample("m", &[("v", &"a\\b\"c\nd")], 0);
        assert_eq!(t.finish(), "m{v=\"a\\\\b\\\"c\\nd\"} 0\n");
    }
}
