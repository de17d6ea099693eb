//! rctl: parses the command line and runs it.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = rctl::Cli::parse();
    let code = {
        // Dropped before exit so buffered spans are flushed.
        let _telemetry = rctl_api::telemetry::init("rctl", "warn");
        rctl::run(cli).await
    };
    std::process::exit(code);
}
