//! The agent's client certificate for kube-apiserver, presented in the TLS handshake. Certificate
//! and key kept in files are read again when the loaded pair is [`REFRESH`] old and a new
//! connection needs it (cert-manager and kubeadm renew them in place), so a renewal takes effect
//! without a restart; connections already open keep the pair they were made with. A pair that
//! does not load (a renewal half written: the new certificate beside the old key) leaves the last
//! good one in use, with a warning.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use tracing::warn;

use super::ApiserverError;
use crate::token_file::REFRESH;

/// Where a certificate or key comes from: a PEM file, or PEM inline in the kubeconfig.
pub(crate) enum CertSource {
    /// A PEM file, read again as it may be renewed.
    File(PathBuf),
    /// PEM text from `client-certificate-data` or `client-key-data`.
    Inline(Vec<u8>),
}

impl fmt::Debug for CertSource {
    // Never the inline bytes: a key is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Inline(_) => f.write_str("Inline"),
        }
    }
}

impl CertSource {
    fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::File(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display())),
            Self::Inline(pem) => Ok(pem.clone()),
        }
    }

    fn origin(&self, inline: &str) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Inline(_) => inline.to_owned(),
        }
    }
}

/// A client certificate and its key, re-read from their files when stale.
#[derive(Debug)]
pub(crate) struct ClientCert {
    cert: CertSource,
    key: CertSource,
    loaded: Mutex<(Arc<CertifiedKey>, Instant)>,
}

impl ClientCert {
    /// Loads the pair once: a certificate or key that does not load, or a key that is not the
    /// certificate's, is an error now rather than a failed handshake later.
    pub(crate) fn load(cert: CertSource, key: CertSource) -> Result<Self, ApiserverError> {
        let pair = certified_key(&cert, &key).map_err(ApiserverError::Config)?;
        Ok(Self {
            cert,
            key,
            loaded: Mutex::new((Arc::new(pair), Instant::now())),
        })
    }

    /// What the credential is, for log lines and errors: the certificate's file, or "inline".
    pub(crate) fn describe(&self) -> String {
        format!(
            "client certificate {}",
            self.cert.origin("client-certificate-data (inline)")
        )
    }

    /// The pair to present now, read again from files when stale.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let from_files = matches!(self.cert, CertSource::File(_)) || matches!(self.key, CertSource::File(_));
        if from_files && loaded.1.elapsed() >= REFRESH {
            match certified_key(&self.cert, &self.key) {
                Ok(pair) => loaded.0 = Arc::new(pair),
                Err(error) => {
                    warn!(%error, "the agent's client certificate did not load again; the last one stays in use")
                }
            }
            // Whether it loaded or not, the files are read again only after another REFRESH.
            loaded.1 = Instant::now();
        }
        loaded.0.clone()
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _root_hints: &[&[u8]], sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let pair = self.current();
        // As rustls's own single-certificate resolver: none if the server takes none of its schemes.
        pair.key.choose_scheme(sigschemes).is_some().then_some(pair)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Parses the certificate chain and key, and checks that the key is the certificate's.
fn certified_key(cert: &CertSource, key: &CertSource) -> Result<CertifiedKey, String> {
    let cert_origin = cert.origin("client-certificate-data");
    let key_origin = key.origin("client-key-data");
    let chain = crate::tls::parse_certs(&cert.read()?, &cert_origin).map_err(|e| e.to_string())?;
    let pem = key.read()?;
    let der = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{key_origin}: {e}"))?
        .ok_or_else(|| format!("{key_origin}: no private key in it"))?;
    let pair = CertifiedKey::from_der(chain, der, &crate::tls::provider())
        .map_err(|e| format!("{key_origin} with {cert_origin}: {e}"))?;
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        crate::tls::ensure_self_signed(&cert, &key, &[name.into()]).unwrap();
        (cert, key)
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        let err = ClientCert::load(CertSource::File(cert), CertSource::File(other_key.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&other_key.display().to_string()) && err.contains("a.crt"),
            "{err}"
        );
        let err = ClientCert::load(CertSource::Inline(b"junk".to_vec()), CertSource::File(other_key))
            .unwrap_err()
            .to_string();
        assert!(err.contains("client-certificate-data: no CERTIFICATE"), "{err}");
    }

    #[test]
    fn a_renewed_pair_is_presented_once_stale_and_a_broken_one_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "agent");
        let client = ClientCert::load(CertSource::File(cert.clone()), CertSource::File(key.clone())).unwrap();
        let first = client.current().cert[0].clone();
        assert_eq!(client.describe(), format!("client certificate {}", cert.display()));

        // Renewed in place: the new pair once the loaded one is stale.
        std::fs::remove_file(&cert).unwrap();
        std::fs::remove_file(&key).unwrap();
        pair(dir.path(), "agent");
        assert_eq!(client.current().cert[0], first, "not stale yet");
        client.loaded.lock().unwrap().1 -= REFRESH;
        let renewed = client.current().cert[0].clone();
        assert_ne!(renewed, first);

        // Half written (a new certificate, the old key): the renewed pair stays.
        let (other, _) = pair(dir.path(), "other");
        std::fs::copy(other, &cert).unwrap();
        client.loaded.lock().unwrap().1 -= REFRESH;
        assert_eq!(client.current().cert[0], renewed);
    }
}
