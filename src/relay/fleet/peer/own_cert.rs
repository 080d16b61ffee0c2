//! This relay's own peer certificate, checked at start as its peers will check it in every
//! handshake: chained to the fleet CA, valid for the relay's `instance` as a DNS name (the name
//! peers dial it under), and good for both ends of a connection (serverAuth when it is dialled,
//! clientAuth when it dials). A certificate that fails any of these would let the relay start and
//! then fail every forward to or from it, so the relay refuses to start instead.

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::PeerError;
use crate::config::PeersConfig;

/// Checks `certs` (this relay's chain, leaf first) against `roots` (the fleet CA) for `instance`.
pub(super) fn check(
    config: &PeersConfig,
    instance: &str,
    certs: &[CertificateDer<'_>],
    roots: &RootCertStore,
) -> Result<(), PeerError> {
    let refuse = |why: String| PeerError::OwnCert {
        file: config.cert_file.display().to_string(),
        why,
    };
    let (leaf, intermediates) = certs
        .split_first()
        .ok_or_else(|| refuse("no certificate in it".into()))?;
    let cert = EndEntityCert::try_from(leaf).map_err(|e| refuse(format!("not a usable certificate: {e}")))?;
    let name = ServerName::try_from(instance).map_err(|_| {
        refuse(format!(
            "instance {instance:?} is not a DNS name a certificate could name"
        ))
    })?;
    if let Err(e) = cert.verify_is_valid_for_subject_name(&name) {
        let presented = match e {
            webpki::Error::CertNotValidForName(context) => format!(" (it names {:?})", context.presented),
            _ => String::new(),
        };
        return Err(refuse(format!(
            "it is not valid for instance {instance:?} as a DNS name{presented}; peers dial this relay under that name"
        )));
    }
    let algorithms = crate::tls::provider().signature_verification_algorithms.all;
    for (usage, eku, role) in [
        (KeyUsage::server_auth(), "serverAuth", "when peers dial it"),
        (KeyUsage::client_auth(), "clientAuth", "when it dials peers"),
    ] {
        let verified = cert.verify_for_usage(
            algorithms,
            &roots.roots,
            intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        );
        match verified {
            Ok(_) => {}
            Err(webpki::Error::RequiredEkuNotFoundContext(_)) => {
                return Err(refuse(format!(
                    "the certificate of instance {instance:?} lacks the extended key usage {eku}, which it needs \
                     {role}"
                )));
            }
            // No CA of that name, or one of that name whose key did not sign it.
            Err(webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey) => {
                return Err(refuse(format!(
                    "the certificate of instance {instance:?} is not signed by peers.ca_file {}",
                    config.ca_file.display()
                )));
            }
            Err(e) => {
                return Err(refuse(format!(
                    "the certificate of instance {instance:?} would be refused by peers: {e}"
                )));
            }
        }
    }
    Ok(())
}
