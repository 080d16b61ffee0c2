//! The caller's side: kubeconfigs that point at the relay, the exec
//! credential plugin, the local proxy, and `hawser clusters`.

pub mod clusters;
pub mod kubeconfig;
pub mod proxy;
pub mod token;

/// Why a client command failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line or environment is wrong.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The relay could not be reached, or refused the request (its `Status` message).
    #[error("{0}")]
    Relay(String),
}

/// The TLS configuration a client of the relay uses: trusting the CAs in `ca_file`, else the
/// system's.
pub fn relay_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, ClientError> {
    let roots = match ca_file {
        Some(ca) => crate::tls::root_store(ca)?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            roots
        }
    };
    Ok(crate::tls::client_config(roots, &[])?)
}

impl ClientError {
    pub(crate) fn file(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}
