//! The peer service's mutual TLS: every tracer holds a certificate signed by the cluster's
//! tracer CA (`tracer certs`), serves with it and asks with it. A server accepts only clients
//! whose certificate chains to that CA; a client accepts only servers whose certificate does
//! and names [`SERVER_NAME`]. TLS 1.3 only, ring as the crypto provider.
//!
//! `ca.crt` may hold several CA certificates (a rotation adds the new CA before the new
//! certificates are rolled out). The files are read again when they change (Kubernetes
//! updates mounted Secrets in place), checked every [`RELOAD_EVERY`].

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig, crypto::CryptoProvider, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// The name in every tracer's certificate and the one clients check.
pub const SERVER_NAME: &str = "tracer-peer";
/// CA bundle file in the TLS directory.
pub const CA_FILE: &str = "ca.crt";
/// Certificate file (leaf first, then any intermediates).
pub const CERT_FILE: &str = "tls.crt";
/// Private key file.
pub const KEY_FILE: &str = "tls.key";
/// How often the files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// Errors reading the TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Server and client configurations built from one directory.
#[derive(Clone, Debug)]
pub struct TlsConfigs {
    /// For the listener.
    pub server: Arc<ServerConfig>,
    /// For asking peers.
    pub client: Arc<ClientConfig>,
}

/// Reads `dir`/{ca.crt, tls.crt, tls.key} and builds both configurations.
pub fn load(dir: &Path) -> Result<TlsConfigs, TlsError> {
    let ca_path = dir.join(CA_FILE);
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca_path)
        .map_err(|e| file_err(&ca_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&ca_path, e))?;
    if cas.is_empty() {
        return Err(file_err(&ca_path, "no certificate in it"));
    }
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| file_err(&ca_path, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| file_err(&cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cert_path, e))?;
    if chain.is_empty() {
        return Err(file_err(&cert_path, "no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_err(&key_path, e))?;
    let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(rustls_err)?;
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(rustls_err)?;
    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The current configurations, read again when the files change.
#[derive(Clone, Debug)]
pub struct TlsStore {
    dir: PathBuf,
    inner: Arc<Mutex<Current>>,
}

#[derive(Debug)]
struct Current {
    configs: TlsConfigs,
    stamp: Vec<Option<SystemTime>>,
    checked: Instant,
}

fn stamp(dir: &Path) -> Vec<Option<SystemTime>> {
    [CA_FILE, CERT_FILE, KEY_FILE]
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(f))
                .and_then(|m| m.modified())
                .ok()
        })
        .collect()
}

impl TlsStore {
    /// Loads `dir` once (errors here stop start-up: a peer service without its material is
    /// a configuration mistake to fix, not to run with).
    pub fn open(dir: &Path) -> Result<Self, TlsError> {
        let configs = load(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            inner: Arc::new(Mutex::new(Current {
                configs,
                stamp: stamp(dir),
                checked: Instant::now(),
            })),
        })
    }

    /// The configurations now (re-read first when due and the files changed; a change that
    /// does not load keeps the previous ones, with a warning).
    pub fn current(&self) -> TlsConfigs {
        let mut cur = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cur.checked.elapsed() >= RELOAD_EVERY {
            cur.checked = Instant::now();
            let now = stamp(&self.dir);
            if now != cur.stamp {
                cur.stamp = now;
                match load(&self.dir) {
                    Ok(c) => {
                        tracing::info!(dir = %self.dir.display(), "peer TLS material reloaded");
                        cur.configs = c;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "peer TLS material changed but does not load: keeping the previous")
                    }
                }
            }
        }
        cur.configs.clone()
    }
}
