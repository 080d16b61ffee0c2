//! The caller's side: kubeconfigs that point at the relay, the exec
//! credential plugin, and the local proxy.

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
}

impl ClientError {
    pub(crate) fn file(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}
