use base64::Engine;
use rcgen::PublicKeyData;
use sha2::{Digest, Sha256};

use super::*;

fn certificate() -> (rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (key, cert)
}

#[test]
fn a_pin_is_the_base64_sha256_of_the_public_key_info() {
    let (key, cert) = certificate();
    let expected = STANDARD.encode(Sha256::digest(key.subject_public_key_info()));
    let pin = Pin::of_certificate(cert.der()).unwrap();
    assert_eq!(pin.to_string(), expected);
    assert_eq!(expected.len(), 44);
    assert_eq!(expected.parse::<Pin>().unwrap(), pin, "Display and parse agree");
}

#[test]
fn the_pin_of_a_pem_file_is_that_of_its_first_certificate() {
    let (_, first) = certificate();
    let (_, second) = certificate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.pem");
    std::fs::write(&path, format!("{}{}", first.pem(), second.pem())).unwrap();
    assert_eq!(
        Pin::of_pem_file(&path).unwrap(),
        Pin::of_certificate(first.der()).unwrap()
    );
    std::fs::write(&path, "no certificate here").unwrap();
    assert!(Pin::of_pem_file(&path).is_err());
}

#[test]
fn a_pin_in_another_encoding_is_refused_with_a_hint() {
    let digest = Sha256::digest(b"");
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let err = hex.parse::<Pin>().unwrap_err();
    assert!(
        err.contains("that is hex") && err.contains("hawser pin --cert"),
        "{err}"
    );
    let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32]);
    assert!(
        url_safe.parse::<Pin>().is_err(),
        "only standard base64, as HPKP and openssl write it"
    );
}

#[test]
fn without_ca_or_pin_there_is_no_trust() {
    assert!(matches!(RelayTrust::new(None, Vec::new()), Err(TlsError::NoTrust)));
    assert!(matches!(RelayTrust::load(None, &[]), Err(TlsError::NoTrust)));
}
