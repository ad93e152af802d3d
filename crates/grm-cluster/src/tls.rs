//! TLS for the gRPC endpoints (rustls, through tonic): a node serves TLS with its certificate,
//! verifies the nodes it calls against the cluster's CA, and, for mutual TLS, requires its
//! clients to present a certificate signed by that CA (and presents its own when it calls).

use std::path::Path;
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
}

/// A node's TLS settings, loaded.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// How this node serves (None: plaintext).
    pub server: Option<ServerTlsConfig>,
    /// How this node calls others (None: plaintext).
    pub client: Option<ClientTlsConfig>,
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
        Ok(Self { server, client })
    }
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
