//! rctl-api: the gRPC API of every rctl component and the glue all binaries share.
//!
//! # Layout
//! - [`pb`]: the generated protobuf messages and tonic services (one schema for wire and etcd).
//! - [`keys`]: the etcd key schema under `/rctl/v1/`.
//! - [`codec`]: protobuf values in and out of etcd.
//! - [`telemetry`]: `tracing` set-up, OTLP export and trace context across gRPC.
//! - [`clock`]: wall-clock timestamps as stored in etcd.
//! - [`metrics`]: the Prometheus text writer and the tiny `/metrics` HTTP endpoint.
//! - [`placement`]: the `[placement]` constraint and spread syntax.
//! - [`reference`]: the image reference grammar (Docker's) and which registry one names.
//! - [`routing`]: what rctl-lb reads from a spec: protocol, PROXY protocol, sticky key.
//! - [`runnable`]: whether a spec can ever run (memory minimum, env, health, listen).
//! - [`logcursor`]: a log reader's position, to resume a stream without loss or repeats.
//! - [`tls`]: the cluster CA, certificates, and every binary's TLS and etcd connect settings.
#![forbid(unsafe_code)]

pub mod clock;
pub mod codec;
pub mod keys;
pub mod logcursor;
pub mod metrics;
pub mod placement;
pub mod reference;
pub mod routing;
pub mod runnable;
pub mod signal;
pub mod telemetry;
pub mod tls;

/// Generated protobuf and gRPC code for package `rctl.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("rctl.v1");
}

/// The port each agent serves its gRPC API on, in its host's network.
pub const DEFAULT_AGENT_PORT: u16 = 7700;
/// The scheduler's default API address.
pub const DEFAULT_SCHEDULER_ADDR: &str = "http://127.0.0.1:7600";
/// The default etcd endpoint.
pub const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";
/// gRPC response metadata a follower scheduler sets on a refused write: the leader's API
/// address, which clients follow.
pub const LEADER_HEADER: &str = "rctl-leader";
