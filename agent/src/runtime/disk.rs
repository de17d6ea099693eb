//! The node's disk reserve: the containers' disk (the agent root, which holds writable
//! layers, volumes, logs and images, and on most hosts is also etcd's and the system's)
//! must keep this much free, or new containers are refused with the reason. [`check`] is
//! the pure rule; [`free_bytes`] asks the kernel.

use std::path::Path;

/// The reserve when the agent is given none (`--disk-reserve`).
pub const DEFAULT_RESERVE: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error("node {node} has {} free for containers, below its reserve of {} (free some space: rctl system prune, rmi; or lower the agent's --disk-reserve)", human(*.free), human(*.reserve))]
    BelowReserve {
        node: String,
        free: u64,
        reserve: u64,
    },
    #[error("invalid disk size {0:?} (e.g. 512MiB, 2GiB, 1073741824)")]
    BadSize(String),
}

/// Refuses a new container on `node` when `free` bytes are below `reserve`.
pub fn check(node: &str, free: u64, reserve: u64) -> Result<(), DiskError> {
    if free < reserve {
        return Err(DiskError::BelowReserve {
            node: node.to_string(),
            free,
            reserve,
        });
    }
    Ok(())
}

/// Bytes available to unprivileged writers on the filesystem of `path` (what the kernel
/// keeps for root is not counted: etcd and the agent need it when containers filled the
/// rest).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// A size as `--disk-reserve` takes it: bytes, or with a unit (K, M, G, T; KiB, MiB, GiB,
/// TiB; KB.. as binary too, as Docker's sizes).
pub fn parse_size(s: &str) -> Result<u64, DiskError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(DiskError::BadSize(s.to_string())),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| DiskError::BadSize(s.to_string()))
}

/// `1.5 GiB`, `300 MiB`: for the refusal's message.
fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_containers_are_refused_below_the_reserve_with_the_numbers() {
        assert!(check("h1", 2 << 30, 1 << 30).is_ok());
        assert!(check("h1", 1 << 30, 1 << 30).is_ok());
        let e = check("h1", 300 << 20, 1 << 30).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "node h1 has 300.0 MiB free for containers, below its reserve of 1.0 GiB"
            ),
            "{e}"
        );
        assert!(check("h1", 0, 0).is_ok(), "a reserve of 0 is off");
    }

    #[test]
    fn sizes_take_dockers_units() {
        assert_eq!(parse_size("1073741824").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1000TiB").unwrap(), 1000 << 40);
        for bad in ["", "x", "5 parsecs", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_space_is_read_from_the_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(free_bytes(tmp.path()).unwrap() > 0);
    }
}
