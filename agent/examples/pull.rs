//! Pull-and-unpack driver for bench/pull: pulls each image with the agent's image store
//! into ROOT and prints one line per image with the wall time and the process's peak RSS.
//!
//! Usage: `pull ROOT INSECURE_REGISTRY IMAGE...` (images are pulled one after another).

use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, insecure, images @ ..] = args.as_slice() else {
        anyhow::bail!("usage: pull ROOT INSECURE_REGISTRY IMAGE...");
    };
    let store = rctl_agent::image::ImageStore::new(root.as_ref(), vec![insecure.clone()]);
    for image in images {
        let t = Instant::now();
        let img = store.ensure(image).await?;
        println!(
            "{image} layers={} seconds={:.3} maxrss_kib={}",
            img.layers.len(),
            t.elapsed().as_secs_f64(),
            maxrss_kib()
        );
    }
    Ok(())
}

/// Peak resident memory of this process so far (VmHWM), in KiB.
fn maxrss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
