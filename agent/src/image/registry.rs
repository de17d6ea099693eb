//! The registry client edge: manifests and blobs over the OCI distribution API, anonymous
//! auth, plain HTTP only for registries the operator listed as insecure.

use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference: {0}")]
    Reference(String),
    /// `reason` is what the registry said (e.g. "manifest unknown"): it ends up in `rctl ps`.
    #[error("{reason}")]
    Registry { reason: String },
    #[error("write blob: {0}")]
    Write(#[source] std::io::Error),
}

/// A pull-only registry client shared by every pull.
pub struct Registry {
    client: Client,
}

impl Registry {
    pub fn new(insecure: Vec<String>) -> Self {
        let config = oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(insecure),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        Self {
            client: Client::new(config),
        }
    }

    pub fn parse(image: &str) -> Result<Reference, RegistryError> {
        image
            .parse::<Reference>()
            .map_err(|e| RegistryError::Reference(format!("{image}: {e}")))
    }

    /// The image manifest (an index resolves to linux/amd64, the client's platform) and
    /// its digest.
    pub async fn manifest(
        &self,
        r: &Reference,
    ) -> Result<(OciImageManifest, String), RegistryError> {
        self.client
            .pull_image_manifest(r, &RegistryAuth::Anonymous)
            .await
            .map_err(registry_error)
    }

    /// Streams blob `desc` into `out`.
    pub async fn blob(
        &self,
        r: &Reference,
        desc: &OciDescriptor,
        out: &mut tokio::fs::File,
    ) -> Result<(), RegistryError> {
        self.client
            .pull_blob(r, desc, out)
            .await
            .map_err(registry_error)
    }
}

/// Extracts the registry's own words from a client error, falling back to the error chain.
fn registry_error(e: OciDistributionError) -> RegistryError {
    let reason = match &e {
        OciDistributionError::RegistryError { envelope, .. } => {
            let msgs: Vec<String> = envelope
                .errors
                .iter()
                .map(|err| {
                    if err.message.is_empty() {
                        format!("{:?}", err.code)
                    } else {
                        err.message.clone()
                    }
                })
                .collect();
            msgs.join("; ")
        }
        OciDistributionError::ServerError { code, message, .. } => {
            format!("registry answered HTTP {code}: {message}")
        }
        OciDistributionError::UnauthorizedError { .. } => "unauthorized".to_string(),
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    };
    RegistryError::Registry { reason }
}
