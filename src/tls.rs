//! TLS material: loading PEM files, generating a self-signed serving
//! certificate for the embedded default, rustls configurations, and how the
//! agent trusts its relay (a CA, pinned keys, or both: [`RelayTrust`]).

mod pin;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use pin::{KeyNotPinned, Pin, Refusals, RelayTrust};

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        error: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What was missing or wrong.
        what: String,
    },
    /// rustls refused the material.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate verifier could not be built from the CA roots.
    #[error("tls verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// Neither a CA nor a pinned key: the relay could not be authenticated.
    #[error("the relay needs a CA, a pinned key or both; there is no insecure mode")]
    NoTrust,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |error| TlsError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    parse_certs(&pem, &path.display().to_string())
}

/// Parses every certificate of PEM text; `origin` names it in errors.
pub fn parse_certs(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: origin.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: origin.to_owned(),
            what: "no CERTIFICATE in it".into(),
        });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.display().to_string(),
            what: "no private key in file".into(),
        })
}

/// A root store holding the certificates of a PEM file.
pub fn root_store(ca_file: &Path) -> Result<rustls::RootCertStore, TlsError> {
    roots_of(load_certs(ca_file)?)
}

/// A root store holding the given certificates.
pub fn roots_of(certs: Vec<CertificateDer<'static>>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Writes a self-signed certificate for `names` into the two files, unless both exist.
pub fn ensure_self_signed(cert_file: &Path, key_file: &Path, names: &[String]) -> Result<bool, TlsError> {
    if cert_file.exists() && key_file.exists() {
        return Ok(false);
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hawser relay (self-signed)");
    let cert = params.self_signed(&key)?;
    for file in [cert_file, key_file] {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
    }
    std::fs::write(cert_file, cert.pem()).map_err(io_err(cert_file))?;
    write_private(key_file, key.serialize_pem().as_bytes())?;
    Ok(true)
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(contents).map_err(io_err(path))
}

/// The process-wide crypto provider (ring), installed once.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration with the given ALPN protocols.
pub fn server_config(cert_file: &Path, key_file: &Path, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert_file)?, load_key(key_file)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration trusting `roots`, with the given ALPN protocols.
pub fn client_config(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration trusting `roots` that presents the client certificate `resolver` gives.
pub fn client_config_presenting(
    roots: rustls::RootCertStore,
    resolver: Arc<dyn rustls::client::ResolvesClientCert>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration whose server certificates `verifier` judges, with the given ALPN protocols.
pub fn client_config_with(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
