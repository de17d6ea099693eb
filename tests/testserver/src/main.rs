//! `rctl-testserver`: the fixture images' HTTP server (`/app/testserver` inside them).
//!
//! See the crate docs for its behaviour; this file only reads the configuration and runs.

#![deny(unsafe_code)]

use std::process::ExitCode;

use rctl_testserver::{server, Config};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match Config::from_sources(|k| std::env::var(k).ok(), &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("testserver: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(code) = cfg.exit_at_start {
        // The `broken` image: fail before ever listening, as a bad release would.
        eprintln!("testserver: exiting at start with status {code} (as configured)");
        std::process::exit(code);
    }
    match server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testserver: {e}");
            ExitCode::FAILURE
        }
    }
}
