//! An ES256 signing key kept in a PKCS#8 PEM file (mode 0600), its public JWKS, and signing.
//!
//! Two keys of the relay use it: the built-in issuer's (caller tokens, `hawser token issue`) and
//! the assertion key (what the relay vouches for towards agents). Each must be a key of its own:
//! the relay refuses to start when any two of them, or either and its TLS key, are the same key
//! ([`SigningKey::spki_sha256`] is what it compares).

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::IssuerError;

/// A P-256 private key; never shown in `Debug` output.
pub struct SigningKey {
    key: EncodingKey,
    kid: String,
    x: String,
    y: String,
    spki_sha256: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// Load the PKCS#8 PEM P-256 key at `key_file`, or create it (mode 0600) if missing and `generate`.
    pub fn load_or_generate(key_file: &Path, generate: bool) -> Result<Self, IssuerError> {
        let io = |source| IssuerError::Io {
            path: key_file.to_owned(),
            source,
        };
        let pem = match std::fs::read_to_string(key_file) {
            Ok(pem) => {
                warn_if_readable_by_others(key_file);
                pem
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
                match write_new_key(key_file) {
                    Ok(pem) => pem,
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::read_to_string(key_file).map_err(io)?
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IssuerError::Missing(key_file.to_owned()));
            }
            Err(e) => return Err(io(e)),
        };
        let invalid = || IssuerError::InvalidKey(key_file.to_owned());
        let pair = KeyPair::from_pem(&pem).map_err(|_| invalid())?;
        if pair.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(invalid());
        }
        let point = pair.public_key_raw();
        if point.len() != 65 || point[0] != 0x04 {
            return Err(invalid());
        }
        let spki_sha256: [u8; 32] = Sha256::digest(pair.subject_public_key_info()).into();
        Ok(Self {
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            kid: URL_SAFE_NO_PAD.encode(&spki_sha256[..16]),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..65]),
            spki_sha256,
        })
    }

    /// Signs `claims` as an ES256 JWT whose header names this key.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, IssuerError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| IssuerError::Sign(e.to_string()))
    }

    /// The public key as a JWKS document, to publish or to trust.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        }]})
    }

    /// The key id put in every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// SHA-256 of the public key's SubjectPublicKeyInfo (the form a TLS key pin takes).
    pub fn spki_sha256(&self) -> [u8; 32] {
        self.spki_sha256
    }
}

/// Create `path` with a fresh key, readable by the owner only, refusing to replace any file.
fn write_new_key(path: &Path) -> std::io::Result<String> {
    let pem = KeyPair::generate().map_err(std::io::Error::other)?.serialize_pem();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    // create_new: never follow a planted symlink or overwrite a key another process wrote.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "generated a new signing key");
    Ok(pem)
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "signing key file is accessible by group or others; use mode 0600");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
