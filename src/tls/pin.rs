//! How the agent trusts its relay: a CA, pinned keys, or both.
//!
//! Threat model: the agent dials out to whatever `relay.address` resolves to,
//! and the relay decides which requests reach the apiserver with the agent's
//! credential. Whoever can pose as the relay can therefore drive the agent,
//! so the agent accepts a relay only when its TLS certificate proves it, and
//! there is no setting that turns the check off.
//!
//! - A CA (`relay.ca_file`): the usual WebPKI check of chain, name and validity.
//! - A pin (`relay.pinned_key_sha256`): the SHA-256 of the relay certificate's
//!   SubjectPublicKeyInfo (its public key), base64 like HPKP's `pin-sha256`.
//!   The end-entity certificate is accepted iff its key hashes to one of the
//!   pins and the handshake signature verifies with that key, so only the
//!   holder of the pinned private key passes. The pin is the trust anchor,
//!   as a self-signed relay certificate would be in `ca_file`: nothing vouches
//!   for the certificate's names or dates, so they are not checked — they
//!   would add no assurance the key does not already give. Several pins stage
//!   a key rotation.
//! - Both: both must hold (chain, name and validity, and the key pinned).
//!
//! The pin and the signature check read the key from the same parse of the
//! certificate (rustls' WebPKI), so the key that is pinned is the key that
//! signed.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::{TlsError, load_certs, provider};

/// The SHA-256 of a certificate's SubjectPublicKeyInfo, written in base64
/// (44 characters), as `hawser pin --cert FILE` prints it.
#[derive(Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of a DER certificate's public key.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Self, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
        Ok(Self(Sha256::digest(parsed.subject_public_key_info().as_ref()).into()))
    }

    /// The SHA-256 of the SubjectPublicKeyInfo.
    pub fn sha256(&self) -> [u8; 32] {
        self.0
    }

    /// The pin of the first certificate of a PEM file (the end-entity one of a chain).
    pub fn of_pem_file(path: &Path) -> Result<Self, TlsError> {
        let certs = load_certs(path)?;
        Ok(Self::of_certificate(&certs[0])?)
    }
}

impl std::str::FromStr for Pin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let why = match STANDARD.decode(text) {
            Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
                Ok(digest) => return Ok(Self(digest)),
                Err(_) if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    "that is hex; give the base64 of the SHA-256".to_owned()
                }
                Err(_) => format!("{} bytes, not the 32 of a SHA-256", bytes.len()),
            },
            Err(e) => format!("not base64 ({e})"),
        };
        Err(format!(
            "pinned_key_sha256 {text:?}: {why} (44 characters, as `hawser pin --cert FILE` prints)"
        ))
    }
}

impl TryFrom<String> for Pin {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// How the agent recognises its relay: CA roots, key pins, or both.
#[derive(Clone, Debug)]
pub struct RelayTrust {
    roots: Option<Arc<RootCertStore>>,
    pins: Vec<Pin>,
}

impl RelayTrust {
    /// Trust from CA roots and pins; at least one must be given (no insecure mode).
    pub fn new(roots: Option<RootCertStore>, pins: Vec<Pin>) -> Result<Self, TlsError> {
        if roots.is_none() && pins.is_empty() {
            return Err(TlsError::NoTrust);
        }
        Ok(Self {
            roots: roots.map(Arc::new),
            pins,
        })
    }

    /// Trust from a CA file and pins, as in the agent's `[relay]` table.
    pub fn load(ca_file: Option<&Path>, pins: &[Pin]) -> Result<Self, TlsError> {
        let roots = ca_file.map(super::root_store).transpose()?;
        Self::new(roots, pins.to_vec())
    }

    /// A client configuration that accepts only a relay this trust recognises.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
        super::client_config_with(self.verifier()?, alpn)
    }

    /// What judges the relay's certificate: the CA's WebPKI check, the pins, or both.
    pub fn verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        Ok(Arc::new(self.relay_verifier(None)?))
    }

    /// The same verifier, keeping why it last refused a certificate in `refusals`, so that a
    /// failed handshake can be explained by its typed cause (QUIC reports only a TLS alert).
    pub fn witnessed_verifier(&self, refusals: Arc<Refusals>) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        Ok(Arc::new(self.relay_verifier(Some(refusals))?))
    }

    fn relay_verifier(&self, refusals: Option<Arc<Refusals>>) -> Result<RelayVerifier, TlsError> {
        let provider = provider();
        let chain = match &self.roots {
            Some(roots) => Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?,
            ),
            None => None,
        };
        Ok(RelayVerifier {
            pins: self.pins.clone(),
            chain,
            algorithms: provider.signature_verification_algorithms,
            refusals,
        })
    }
}

/// Why a relay's certificate was last refused, as a [`RelayTrust::witnessed_verifier`] saw it.
#[derive(Debug, Default)]
pub struct Refusals(Mutex<Option<rustls::Error>>);

impl Refusals {
    /// The last refusal, if the last certificate was refused.
    pub fn last(&self) -> Option<rustls::Error> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The relay presented a key that no pin names (the pin of that key).
pub struct KeyNotPinned(pub Pin);

impl fmt::Display for KeyNotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the relay's key (pin {}) is not in relay.pinned_key_sha256", self.0)
    }
}

// rustls prints a certificate error's cause with `{:?}`: keep it readable.
impl fmt::Debug for KeyNotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for KeyNotPinned {}

/// Accepts the relay's certificate iff the WebPKI check passes (with a CA) and its key is pinned
/// (with pins); handshake signatures are verified with the certificate's key as rustls' own
/// verifier does.
#[derive(Debug)]
struct RelayVerifier {
    pins: Vec<Pin>,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
    /// Where a refusal is kept, for a caller that explains it.
    refusals: Option<Arc<Refusals>>,
}

impl ServerCertVerifier for RelayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = (|| {
            if let Some(chain) = &self.chain {
                chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
            }
            if self.pins.is_empty() {
                return Ok(ServerCertVerified::assertion());
            }
            let presented = Pin::of_certificate(end_entity)?;
            if self.pins.contains(&presented) {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                    Arc::new(KeyNotPinned(presented)),
                ))))
            }
        })();
        if let Some(refusals) = &self.refusals {
            *refusals.0.lock().unwrap_or_else(|e| e.into_inner()) = verdict.as_ref().err().cloned();
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
