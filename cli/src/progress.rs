//! Pull progress: one bar per layer redrawn in place on a terminal, plain lines otherwise
//! (`h1: 3f2a1b4c5d6e: downloading 12.3 MB/40.1 MB`), printed on each state change and every
//! quarter of a download so a log stays short. `rctl pull` draws on stdout; `rctl run`
//! draws on stderr (its stdout is the container's), without the node in front (one node).

use std::collections::HashMap;
use std::io::Write;

use rctl_api::pb::{LayerProgress, LayerState};

use crate::output::{self, ByteStyle, ByteUnits};

/// `1234567` → `1.2 MB` (decimal units, like docker).
pub fn human(bytes: u64) -> String {
    output::bytes(bytes, ByteUnits::Decimal, ByteStyle::Spaced)
}

/// The 12 hex digits docker shows for a digest.
pub fn short(digest: &str) -> String {
    let h = digest.strip_prefix("sha256:").unwrap_or(digest);
    h.chars().take(12).collect()
}

pub fn state_name(s: LayerState) -> &'static str {
    match s {
        LayerState::Unspecified | LayerState::Waiting => "waiting",
        LayerState::Downloading => "downloading",
        LayerState::Extracting => "extracting",
        LayerState::Done => "pull complete",
        LayerState::AlreadyExists => "already exists",
    }
}

/// `node: ` in front of a line, nothing for "".
fn prefix(node: &str) -> String {
    if node.is_empty() {
        String::new()
    } else {
        format!("{node}: ")
    }
}

/// One plain line for a layer event.
pub fn plain_line(node: &str, p: &LayerProgress) -> String {
    let state = p.state();
    let head = format!(
        "{}{}: {}",
        prefix(node),
        short(&p.digest),
        state_name(state)
    );
    match state {
        LayerState::Downloading => {
            format!("{head} {}/{}", human(p.bytes_done), human(p.bytes_total))
        }
        _ => head,
    }
}

/// One terminal line for a layer event: a 30-column bar while downloading.
pub fn bar_line(node: &str, p: &LayerProgress) -> String {
    let state = p.state();
    if state != LayerState::Downloading {
        return plain_line(node, p);
    }
    const W: u64 = 30;
    let filled = (p.bytes_done.min(p.bytes_total) * W)
        .checked_div(p.bytes_total)
        .unwrap_or(0);
    format!(
        "{}{}: downloading [{}>{}] {}/{}",
        prefix(node),
        short(&p.digest),
        "=".repeat(filled as usize),
        " ".repeat((W - filled) as usize),
        human(p.bytes_done),
        human(p.bytes_total)
    )
}

/// Whether a plain line is worth printing: a new state, or a download past another quarter.
fn worth_printing(
    last: Option<&(LayerState, u64)>,
    p: &LayerProgress,
) -> Option<(LayerState, u64)> {
    let quarter = (p.bytes_done * 4).checked_div(p.bytes_total).unwrap_or(0);
    let now = (p.state(), quarter);
    (last != Some(&now)).then_some(now)
}

/// Draws the layers of a pull (every node's) as they progress.
pub struct Progress {
    tty: bool,
    /// Draw on stderr instead of stdout.
    stderr: bool,
    /// (node, digest) → line index, in the order first seen.
    order: HashMap<(String, String), usize>,
    lines: Vec<String>,
    /// Lines on screen below the first one of ours.
    drawn: usize,
    last: HashMap<(String, String), (LayerState, u64)>,
}

impl Progress {
    pub fn new(tty: bool) -> Self {
        Self::with_output(tty, false)
    }

    /// Progress on stderr (a terminal or not: `tty`), for commands whose stdout is data.
    pub fn on_stderr(tty: bool) -> Self {
        Self::with_output(tty, true)
    }

    fn with_output(tty: bool, stderr: bool) -> Self {
        Self {
            tty,
            stderr,
            order: HashMap::new(),
            lines: Vec::new(),
            drawn: 0,
            last: HashMap::new(),
        }
    }

    pub fn layer(&mut self, node: &str, p: &LayerProgress) {
        let key = (node.to_string(), p.digest.clone());
        if !self.tty {
            if let Some(now) = worth_printing(self.last.get(&key), p) {
                self.last.insert(key, now);
                self.println(&plain_line(node, p));
            }
            return;
        }
        let i = *self.order.entry(key).or_insert_with(|| {
            self.lines.push(String::new());
            self.lines.len() - 1
        });
        self.lines[i] = bar_line(node, p);
        self.redraw();
    }

    fn out(&self) -> Box<dyn Write> {
        if self.stderr {
            Box::new(std::io::stderr().lock())
        } else {
            Box::new(std::io::stdout().lock())
        }
    }

    fn println(&self, line: &str) {
        let _ = writeln!(self.out(), "{line}");
    }

    fn redraw(&mut self) {
        let mut out = self.out();
        if self.drawn > 0 {
            // Back to our first line, then rewrite every line in place.
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for l in &self.lines {
            let _ = writeln!(out, "\r\x1b[2K{l}");
        }
        let _ = out.flush();
        drop(out);
        self.drawn = self.lines.len();
    }

    /// A line that is not a layer (a result or an error), printed below the bars.
    pub fn message(&mut self, line: &str) {
        self.println(line);
        if self.tty {
            // Bars drawn from now on go below this line.
            self.order.clear();
            self.lines.clear();
            self.drawn = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(state: LayerState, done: u64, total: u64) -> LayerProgress {
        LayerProgress {
            digest: format!("sha256:3f2a1b{}", "0".repeat(58)),
            state: state as i32,
            bytes_done: done,
            bytes_total: total,
        }
    }

    #[test]
    fn plain_lines_say_node_layer_state_and_bytes() {
        assert_eq!(
            plain_line("h1", &p(LayerState::Downloading, 12_300_000, 40_100_000)),
            "h1: 3f2a1b000000: downloading 12.3 MB/40.1 MB"
        );
        assert_eq!(
            plain_line("h1", &p(LayerState::AlreadyExists, 5, 5)),
            "h1: 3f2a1b000000: already exists"
        );
        assert_eq!(
            plain_line("", &p(LayerState::Done, 5, 5)),
            "3f2a1b000000: pull complete"
        );
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500), "1.5 kB");
    }

    #[test]
    fn bars_fill_with_the_download_and_cope_with_unknown_sizes() {
        let half = bar_line("h1", &p(LayerState::Downloading, 50, 100));
        assert!(
            half.contains(&format!("[{}>{}]", "=".repeat(15), " ".repeat(15))),
            "{half}"
        );
        let unknown = bar_line("h1", &p(LayerState::Downloading, 50, 0));
        assert!(
            unknown.contains(&format!("[>{}]", " ".repeat(30))),
            "{unknown}"
        );
    }

    #[test]
    fn plain_mode_prints_state_changes_and_quarters_only() {
        let mut last = None;
        let mut printed = 0;
        for done in (0..=100).step_by(5) {
            if let Some(now) = worth_printing(last.as_ref(), &p(LayerState::Downloading, done, 100))
            {
                last = Some(now);
                printed += 1;
            }
        }
        assert_eq!(printed, 5);
        assert!(worth_printing(last.as_ref(), &p(LayerState::Done, 100, 100)).is_some());
    }
}
