//! TLS termination: certificates from PEM files, one chosen per connection by SNI, with
//! ALPN offering `h2` and `http/1.1`.
//!
//! [`choose`] is the pure decision (exact name first, then a `*.` wildcard covering one
//! label, else the default); [`acceptor`] loads the files and builds the rustls config.
//! Vocabulary: the *default* certificate is the entry without server names (the first
//! entry when every one has names), served to clients that send no SNI or an unknown name.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::routes::TlsCert;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate configured")]
    NoCertificate,
    #[error("read certificate chain {path}")]
    ReadCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate chain {path} holds no certificate")]
    EmptyChain { path: PathBuf },
    #[error("read private key {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("private key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration")]
    Config(#[source] rustls::Error),
}

/// Index of the certificate to serve for `sni` among entries with these server names:
/// an exact (case-insensitive) name, else a wildcard `*.rest` where `sni` is one label
/// followed by `.rest`, else the default.
pub fn choose<S: AsRef<str>>(names: &[Vec<S>], sni: Option<&str>) -> usize {
    let default = names.iter().position(|n| n.is_empty()).unwrap_or(0);
    let Some(sni) = sni else {
        return default;
    };
    let exact = names
        .iter()
        .position(|n| n.iter().any(|n| n.as_ref().eq_ignore_ascii_case(sni)));
    let wildcard = || {
        let (_, parent) = sni.split_once('.')?;
        names.iter().position(|n| {
            n.iter().any(|n| {
                n.as_ref()
                    .strip_prefix("*.")
                    .is_some_and(|w| w.eq_ignore_ascii_case(parent))
            })
        })
    };
    exact.or_else(wildcard).unwrap_or(default)
}

/// The loaded certificates with their names; rustls asks it once per handshake.
struct SniResolver {
    names: Vec<Vec<String>>,
    keys: Vec<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.names)
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.keys[choose(&self.names, hello.server_name())].clone())
    }
}

/// Loads every certificate and key and builds the acceptor (ALPN `h2`, `http/1.1`).
pub fn acceptor(certs: &[TlsCert]) -> Result<TlsAcceptor, TlsError> {
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut keys = Vec::with_capacity(certs.len());
    for c in certs {
        keys.push(Arc::new(load(&c.cert, &c.key, &provider)?));
    }
    let resolver = SniResolver {
        names: certs.iter().map(|c| c.server_names.clone()).collect(),
        keys,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|source| TlsError::ReadCert {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::EmptyChain {
            path: cert.to_path_buf(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_path_buf(),
        source,
    })?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsError::Key {
            path: key.to_path_buf(),
            source,
        })?;
    Ok(CertifiedKey::new(chain, signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let names: Vec<Vec<&str>> =
            vec![vec!["a.example"], vec![], vec!["*.b.example", "b.example"]];
        assert_eq!(choose(&names, Some("a.example")), 0);
        assert_eq!(choose(&names, Some("A.EXAMPLE")), 0);
        assert_eq!(choose(&names, Some("b.example")), 2);
        assert_eq!(choose(&names, Some("www.b.example")), 2);
        // A wildcard covers one label only.
        assert_eq!(choose(&names, Some("x.www.b.example")), 1);
        assert_eq!(choose(&names, Some("other.example")), 1);
        assert_eq!(choose(&names, None), 1);
        // Every entry named: the first is the default.
        let named: Vec<Vec<&str>> = vec![vec!["x"], vec!["y"]];
        assert_eq!(choose(&named, Some("z")), 0);
    }

    #[test]
    fn missing_or_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsCert {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
            server_names: vec![],
        };
        let Err(e) = acceptor(std::slice::from_ref(&missing)) else {
            panic!("loaded a missing file")
        };
        assert!(e.to_string().contains("nope.pem"), "{e}");
        std::fs::write(dir.path().join("empty.pem"), "not pem\n").unwrap();
        let empty = TlsCert {
            cert: dir.path().join("empty.pem"),
            ..missing
        };
        let Err(e) = acceptor(&[empty]) else {
            panic!("loaded an empty chain")
        };
        assert!(matches!(e, TlsError::EmptyChain { .. }), "{e}");
        assert!(matches!(acceptor(&[]), Err(TlsError::NoCertificate)));
    }
}
