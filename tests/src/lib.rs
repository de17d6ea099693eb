//! rctl-tests: end-to-end tests of rctl on a real multi-host cluster.
//!
//! # Layout
//! - [`cluster`]: the harness that starts a `deploy/local/cluster` per test and tears it down.
//! - [`etcd`]: a throwaway etcd for component tests of the scheduler and the LB.
//! - [`hollow`]: etcd + scheduler + `rctl-agent hollow` nodes on loopback, for scale tests.
//! - [`fixtures`]: the project's own test images (busybox, testserver), built and pushed with
//!   its own OCI code.
//! - [`tmux`]: a real terminal (a tmux session of the test's own) for `exec -it`, `run -it`.
//! - [`testserver`]: the fixture test server as a plain process, for component tests.
//! - [`outside`]: a network namespace on the cluster's link that is not a cluster host.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod etcd;
pub mod fixtures;
pub mod hollow;
pub mod outside;
pub mod testserver;
pub mod tmux;
