//! rctl: parses the command line and runs it.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = match rctl::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        // One line, like every other rctl error: the usage hint is what --help is for.
        Err(e) => {
            let text = e.to_string();
            eprintln!(
                "{} (see: rctl --help)",
                rctl::values::human_types(text.lines().next().unwrap_or("bad usage"))
            );
            std::process::exit(2);
        }
    };
    let code = {
        // Dropped before exit so buffered spans are flushed.
        let _telemetry = rctl_api::telemetry::init("rctl", "warn");
        rctl::run(cli).await
    };
    std::process::exit(code);
}
