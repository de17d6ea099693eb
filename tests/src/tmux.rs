//! A real terminal for end-to-end tests: a tmux server of the test's own (its own socket)
//! running an `rctl` command in a detached 80x24 session, driven with send-keys and read
//! with capture-pane, as a user at a keyboard would. Used by `exec -it` and `run -it`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A tmux server and session of our own, killed when dropped.
pub struct Tmux {
    socket: String,
    session: String,
    /// Where the command's exit code is written when it ends.
    code_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// Starts `command` (a shell command line) in an 80x24 terminal; `name` keeps the tmux
    /// socket apart from other tests'.
    pub fn start(name: &str, command: &str) -> Tmux {
        let dir = tempfile::tempdir().expect("tempdir");
        let code_file = dir.path().join("code");
        let id = format!("rctl-{name}-{}", std::process::id());
        let t = Tmux {
            socket: id.clone(),
            session: id,
            code_file,
            _dir: dir,
        };
        // The pane stays after the command ends (the trailing sleep, ended by Drop), so a
        // failure shows what the command printed, not an empty pane of a closed session.
        let line = format!(
            "{command}; c=$?; echo $c > '{}'; echo \"[command exited with $c]\"; sleep 600",
            t.code_file.display()
        );
        let out = t.cmd(&[
            "new-session",
            "-d",
            "-s",
            &t.session,
            "-x",
            "80",
            "-y",
            "24",
            &line,
        ]);
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// What the terminal shows now.
    pub fn pane(&self) -> String {
        String::from_utf8_lossy(
            &self
                .cmd(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
        .into_owned()
    }

    /// Waits until the pane shows what `pred` wants; panics with the pane otherwise.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut pred: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let pane = self.pane();
            if pred(&pane) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what} ({}); the pane shows:\n{pane}",
                    self.ended()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Types `keys` and Enter.
    pub fn keys(&self, keys: &str) {
        let out = self.cmd(&["send-keys", "-t", &self.session, "-l", keys]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.cmd(&["send-keys", "-t", &self.session, "Enter"]);
    }

    /// Resizes the terminal; returns its size as `stty size` prints it ("ROWS COLS").
    pub fn resize(&self, cols: u16, rows: u16) -> String {
        let (c, r) = (cols.to_string(), rows.to_string());
        let out = self.cmd(&["resize-window", "-t", &self.session, "-x", &c, "-y", &r]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.cmd(&[
            "display-message",
            "-p",
            "-t",
            &self.session,
            "#{pane_height} #{pane_width}",
        ]);
        let size = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(size.ends_with(&format!(" {cols}")), "tmux reports {size}");
        size
    }

    /// Whether the command has ended, for failure messages.
    fn ended(&self) -> String {
        match std::fs::read_to_string(&self.code_file) {
            Ok(code) => format!("the command ended with {}", code.trim()),
            Err(_) => "the command is still running".to_string(),
        }
    }

    /// The command's exit code, once it has ended.
    pub fn exit_code(&self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = std::fs::read_to_string(&self.code_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return code;
            }
            if Instant::now() > deadline {
                panic!("the command did not end; the pane shows:\n{}", self.pane());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The session every interactive-shell test drives: busybox `sh`'s prompt shows,
    /// `echo $((6*7))` prints 42, a resize of the terminal is what `stty size` sees inside,
    /// and `exit 3` ends the command with 3 (returned).
    pub fn drive_shell(&self) -> i32 {
        // busybox sh's prompt; capture-pane drops its trailing blank.
        self.wait_for("the shell's prompt", Duration::from_secs(60), |p| {
            p.contains("/ #")
        });
        self.keys("echo $((6*7))");
        self.wait_for("42", Duration::from_secs(10), |p| {
            p.lines().any(|l| l.trim() == "42")
        });
        let size = self.resize(100, 30);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.keys("stty size");
            std::thread::sleep(Duration::from_millis(300));
            if self.pane().lines().any(|l| l.trim() == size) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stty size never showed {size}; the pane shows:\n{}",
                self.pane()
            );
        }
        self.keys("exit 3");
        self.exit_code(Duration::from_secs(20))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.cmd(&["kill-session", "-t", &self.session]);
        self.cmd(&["kill-server"]);
    }
}
