//! `rctl-fixtures`: builds the project's test images and pushes them to a registry.
//!
//! `deploy/local/cluster up` runs `rctl-fixtures push` so every local cluster (the demo's and
//! each test's) has `rctl/busybox` and `rctl/testserver:*` without the internet.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Build rctl's fixture images and push them to a registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build every fixture image and push it (plain HTTP, anonymous).
    Push {
        /// Registry as HOST:PORT.
        #[arg(long, env = "RCTL_REGISTRY")]
        registry: String,
        /// A static busybox binary (Debian's busybox-static).
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// The static rctl-testserver binary (`make build` builds it).
        #[arg(
            long,
            env = "RCTL_TESTSERVER",
            default_value = "/var/cache/rctl/static/x86_64-unknown-linux-gnu/release/rctl-testserver"
        )]
        testserver: PathBuf,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Push {
            registry,
            busybox,
            testserver,
        } => {
            let pushed =
                rctl_tests::fixtures::push_fixtures(&registry, &busybox, &testserver).await?;
            for p in pushed {
                println!("pushed {}", p.reference);
            }
        }
    }
    Ok(())
}
