//! HTTPS for the API (rustls), and optionally mTLS: with a client CA, a
//! client may present a certificate that CA signed instead of a bearer token;
//! its subject's common name becomes the principal and its organizational
//! unit the role (`CN=ci-bot, OU=operator`). Clients without a certificate
//! still authenticate with tokens.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use scheduler::auth::{Principal, Role};

/// The largest PEM file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A principal proven by a client certificate the client CA signed.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Principal);

/// The API's TLS settings, ready to accept.
#[derive(Clone)]
pub struct ApiTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiTls")
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    crate::auth::read_bounded(path, MAX_PEM_BYTES, "PEM file")
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certificates)
}

impl ApiTls {
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// From PEM files: the server's certificate chain and key, and the CA
    /// whose client certificates are accepted (mTLS), if any.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_slice(&read_pem(key)?)
            .map_err(|error| format!("{}: {error}", key.display()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?;
        let builder = match client_ca {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates(path)? {
                    roots
                        .add(certificate)
                        .map_err(|error| format!("{}: {error}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|error| format!("{}: {error}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| format!("the API's certificate and key: {error}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// The principal of a client certificate: CN the name, OU the role.
pub fn principal_of(certificate: &[u8]) -> Result<Principal, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|error| format!("client certificate: {error}"))?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the client certificate's subject has no common name")?;
    scheduler::auth::check_principal_name(name)?;
    let role = subject
        .iter_organizational_unit()
        .filter_map(|ou| ou.as_str().ok())
        .find_map(|ou| ou.parse::<Role>().ok())
        .ok_or_else(|| {
            format!("the client certificate of {name} names no flotilla role in its OU")
        })?;
    Ok(Principal {
        name: name.to_string(),
        role,
        issued_by: None,
    })
}

/// The principal of the connection's verified client certificate, if any.
pub(crate) fn client_certificate(
    stream: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: std::net::SocketAddr,
) -> Option<ClientCertificate> {
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certificates| certificates.first())
        .map(|certificate| principal_of(certificate.as_ref()))?;
    match certificate {
        Ok(principal) => Some(ClientCertificate(principal)),
        Err(why) => {
            tracing::warn!(%peer, why, "client certificate without a usable principal");
            None
        }
    }
}
