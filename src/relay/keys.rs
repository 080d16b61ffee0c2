//! The relay's keys are kept apart: its TLS key, the built-in issuer's key (caller tokens) and
//! the assertion key (what agents believe about callers) must be three different keys. One key in
//! two roles would let whoever holds it for the weaker role (a TLS key is often copied to load
//! balancers) sign in the stronger one; with separate keys the issuer's key can even live outside
//! the relay (`hawser token issue --signing-key`, the relay trusting its public half as an
//! ordinary `[[issuers]]` entry).

use std::path::Path;

use super::RelayError;
use crate::auth::BuiltinIssuer;
use crate::auth::assertion::AssertionMinter;
use crate::tls::Pin;

/// Refuses start-up when any two of the relay's keys are the same key.
pub(super) fn check_distinct(
    tls_cert: &Path,
    issuer: Option<&BuiltinIssuer>,
    minter: Option<&AssertionMinter>,
) -> Result<(), RelayError> {
    let tls = Pin::of_pem_file(tls_cert)?.sha256();
    let mut keys = vec![("the TLS key ([tls] key_file)", tls)];
    if let Some(issuer) = issuer {
        keys.push((
            "the built-in issuer's key ([issuer] signing_key_file)",
            issuer.key().spki_sha256(),
        ));
    }
    if let Some(minter) = minter {
        keys.push((
            "the assertion key ([assertions] signing_key_file)",
            minter.key().spki_sha256(),
        ));
    }
    for (i, (first, a)) in keys.iter().enumerate() {
        if let Some((second, _)) = keys[i + 1..].iter().find(|(_, b)| b == a) {
            return Err(RelayError::SharedKey(format!(
                "{first} and {second} are the same key; give each role a key of its own"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SigningKey;

    #[test]
    fn a_key_in_two_roles_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        crate::tls::ensure_self_signed(&cert, &key, &["localhost".to_owned()]).unwrap();
        let issuer =
            |file: &Path| BuiltinIssuer::load_or_generate(file, "https://relay".into(), "hawser".into(), true).unwrap();
        let minter = |file: &Path| {
            let key = SigningKey::load_or_generate(file, true).unwrap();
            AssertionMinter::new(
                key,
                "https://relay/assertions".into(),
                std::time::Duration::from_secs(300),
            )
        };
        // The finding: nothing stopped the built-in issuer from signing with the TLS key.
        let err = check_distinct(&cert, Some(&issuer(&key)), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("TLS key") && err.contains("built-in issuer"), "{err}");
        assert!(check_distinct(&cert, None, Some(&minter(&key))).is_err());
        let shared = dir.path().join("shared.key");
        assert!(check_distinct(&cert, Some(&issuer(&shared)), Some(&minter(&shared))).is_err());
        let (own_issuer, own_minter) = (dir.path().join("issuer.key"), dir.path().join("assertion.key"));
        check_distinct(&cert, Some(&issuer(&own_issuer)), Some(&minter(&own_minter))).expect("three keys");
    }
}
