//! TLS for the gRPC endpoints (rustls, through tonic): a node serves TLS with its certificate,
//! verifies the nodes it calls against the cluster's CA, and, for mutual TLS, requires its
//! clients to present a certificate signed by that CA (and presents its own when it calls).

use std::path::Path;
use std::sync::Arc;
use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    HalfIdentity,
    #[error("--tls-client-auth needs --tls-ca (to verify clients) and --tls-cert/--tls-key (to serve TLS)")]
    ClientAuthWithoutCa,
    #[error(
        "--http-tls needs --tls-cert and --tls-key (the HTTP listener serves the same certificate)"
    )]
    HttpWithoutIdentity,
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
}

/// Where a node's TLS material is (PEM files).
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles<'a> {
    /// This node's certificate chain and private key: it serves TLS with them, and presents
    /// them when it calls a node that requires client certificates.
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    /// The CA of the cluster's certificates: the nodes this one calls are verified against it
    /// (and called over https); with `client_auth`, so are its clients.
    pub ca: Option<&'a Path>,
    /// Mutual TLS: refuse clients without a certificate signed by `ca`.
    pub client_auth: bool,
    /// Serve the HTTP listeners over HTTPS too, with the same certificate.
    pub http: bool,
}

/// A node's TLS settings, loaded.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// How this node serves (None: plaintext).
    pub server: Option<ServerTlsConfig>,
    /// How this node calls others (None: plaintext).
    pub client: Option<ClientTlsConfig>,
    /// How its HTTP listeners serve (None: plain HTTP).
    pub http: Option<Arc<rustls::ServerConfig>>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl Tls {
    pub fn load(f: TlsFiles<'_>) -> Result<Self, TlsError> {
        let identity = match (f.cert, f.key) {
            (Some(c), Some(k)) => Some(Identity::from_pem(
                read("the certificate", c)?,
                read("the private key", k)?,
            )),
            (None, None) => None,
            _ => return Err(TlsError::HalfIdentity),
        };
        let ca =
            f.ca.map(|p| read("the CA certificate", p).map(Certificate::from_pem))
                .transpose()?;
        if f.client_auth && (ca.is_none() || identity.is_none()) {
            return Err(TlsError::ClientAuthWithoutCa);
        }
        let http = match (f.http, f.cert, f.key) {
            (false, _, _) => None,
            (true, Some(c), Some(k)) => Some(https_config(c, k)?),
            (true, _, _) => return Err(TlsError::HttpWithoutIdentity),
        };
        let server = identity.clone().map(|id| {
            let s = ServerTlsConfig::new().identity(id);
            match (&ca, f.client_auth) {
                (Some(ca), true) => s.client_ca_root(ca.clone()),
                _ => s,
            }
        });
        let client = ca.map(|ca| {
            let c = ClientTlsConfig::new().ca_certificate(ca);
            match identity {
                Some(id) => c.identity(id),
                None => c,
            }
        });
        Ok(Self {
            server,
            client,
            http,
        })
    }
}

/// A rustls server configuration for HTTPS from PEM files (HTTP/2 and HTTP/1.1 by ALPN).
fn https_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pem(cert, &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| pem(cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inconsistent_files_are_refused_by_name() {
        let p = Path::new("/nonexistent/cert.pem");
        let e = Tls::load(TlsFiles {
            cert: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::HalfIdentity));
        let e = Tls::load(TlsFiles {
            client_auth: true,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::ClientAuthWithoutCa));
        let e = Tls::load(TlsFiles {
            ca: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("reading the CA certificate /nonexistent/cert.pem"),
            "{e}"
        );
        let none = Tls::load(TlsFiles::default()).unwrap();
        assert!(none.server.is_none() && none.client.is_none());
    }
}
