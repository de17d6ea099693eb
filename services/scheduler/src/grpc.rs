//! The one place scheduler errors become gRPC statuses.

use tonic::Status;

use crate::image_check::ImageCheckError;
use crate::names::Owner;
use crate::revisions::RevisionError;
use crate::spec::SpecError;
use crate::store::StoreError;
use crate::targets::TargetError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("service {0:?} not found (see: rctl service ls)")]
    ServiceNotFound(String),
    #[error("node {0:?} not found (see: rctl nodes)")]
    NodeNotFound(String),
    #[error("no such image: {0} (see: rctl images)")]
    ImageNotFound(String),
    #[error("{0}")]
    Invalid(#[from] SpecError),
    #[error(transparent)]
    Revision(#[from] RevisionError),
    /// A request that is wrong in itself; the message says what and what to do.
    #[error("{0}")]
    BadRequest(String),
    /// The change's image is missing from its registry, or the registry refused it.
    #[error(transparent)]
    Image(#[from] ImageCheckError),
    #[error("container name {name:?} is already in use by container {id} (remove or rename it)")]
    NameInUse { name: String, id: String },
    /// A container name that a service or its tasks (`SERVICE.N`) hold.
    #[error("name {name:?} is taken by {owner} (services, their tasks SERVICE.N and containers share one namespace: choose another name)")]
    NameTaken { name: String, owner: Owner },
    /// A service whose name or task names a container holds.
    #[error("service {service:?} would share names with {owner} (services, their tasks SERVICE.N and containers share one namespace: rename or remove the container)")]
    ServiceNameTaken { service: String, owner: Owner },
    /// A `port.listen` that another service's rctl-lb listener holds.
    #[error("port.listen {listen} is taken by service {owner} (choose another address or port, or change {owner} first)")]
    ListenTaken { listen: String, owner: String },
    #[error("port {port} is already allocated on node {node}")]
    PortAllocated { port: u32, node: String },
    #[error("service {0:?} has no canary rollout running (see: rctl rollout status {0})")]
    NoCanary(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A container/task/service target that names nothing, or more than one thing.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A write reached a follower; carries the leader's API address when one is known.
    #[error("{}", match .0 {
        Some(addr) => format!("this scheduler is not the leader; the leader is at {addr}"),
        None => "no scheduler leader is elected right now; retry in a few seconds".to_string(),
    })]
    NotLeader(Option<String>),
    /// An agent's answer about one container (exec, attach, logs, stats, top), passed on as
    /// it is: the message names the container already.
    #[error("{message}")]
    Container { code: tonic::Code, message: String },
    /// An agent's answer to an image request, passed on with its code.
    #[error("{node}: {message}")]
    Agent {
        node: String,
        code: tonic::Code,
        message: String,
    },
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match &e {
            // Not found is one code (the CLI's exit 1) for every kind of target, a revision
            // included (docs/exit-codes.md).
            ApiError::ServiceNotFound(_)
            | ApiError::NodeNotFound(_)
            | ApiError::ImageNotFound(_)
            | ApiError::Target(TargetError::NotFound(_))
            | ApiError::Revision(RevisionError::NotKept { .. }) => Status::not_found(e.to_string()),
            ApiError::Target(_) => Status::invalid_argument(e.to_string()),
            // Exit 1, not 2: the request is fine, the service's state refuses it (busy, no
            // earlier revision, already at that revision, nothing for a canary to change).
            ApiError::Revision(_) => Status::failed_precondition(e.to_string()),
            ApiError::Invalid(_) | ApiError::BadRequest(_) => {
                Status::invalid_argument(e.to_string())
            }
            ApiError::Store(StoreError::Conflict(_)) => Status::aborted(e.to_string()),
            ApiError::Image(ImageCheckError::Invalid { .. }) => {
                Status::invalid_argument(e.to_string())
            }
            ApiError::NameInUse { .. } | ApiError::Store(StoreError::NameTaken(_)) => {
                Status::already_exists(e.to_string())
            }
            // Exit 1: a refusal because of state, like a port in use.
            ApiError::PortAllocated { .. }
            | ApiError::NameTaken { .. }
            | ApiError::ServiceNameTaken { .. }
            | ApiError::ListenTaken { .. } => Status::failed_precondition(e.to_string()),
            // Exit 1, not 2 (issue 8): the file is fine, the registry lacks what it names.
            ApiError::NoCanary(_) | ApiError::Image(_) => {
                Status::failed_precondition(e.to_string())
            }
            ApiError::NotLeader(Some(addr)) => {
                let mut s = Status::failed_precondition(e.to_string());
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert(rctl_api::LEADER_HEADER, v);
                }
                s
            }
            ApiError::NotLeader(None) => Status::unavailable(e.to_string()),
            ApiError::Agent { code, .. } | ApiError::Container { code, .. } => {
                Status::new(*code, e.to_string())
            }
            // API writes are not fenced; this only appears if that ever changes.
            ApiError::Store(StoreError::NotLeader(_)) => Status::unavailable(e.to_string()),
            ApiError::Store(StoreError::Etcd { .. }) => {
                tracing::error!(error = %e, "store unavailable");
                Status::unavailable(format!("{e} (is etcd up?)"))
            }
        }
    }
}
