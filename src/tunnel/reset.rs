//! The relay's QUIC stateless-reset key, derived so that a relay restarted as itself can end
//! the tunnels its previous process held at their next packet, not at their idle timeout.
//!
//! A QUIC endpoint that gets a packet for a connection it does not know answers with a
//! *stateless reset* (RFC 9000 §10.3): a packet ending in the token it gave for that connection
//! ID, `HMAC(reset key, connection ID)` in quinn. The peer compares the token with the one it
//! was given and, if it matches, drops the connection at once. quinn draws the key at random per
//! process, so a relay restarted on the same address could not produce its old tokens, and each
//! agent found out only when its idle timeout ran out. Here the key is
//!
//! ```text
//! HKDF-SHA256(salt = "hawser quic stateless reset v1", secret = the serving TLS private key (DER),
//!             info = "agents", 0x00, server id (8 octets), instance name)
//!   -> 32 octets, the HMAC-SHA256 key
//! ```
//!
//! - **Secret**: whoever knows the key can forge resets and end tunnels, so it comes from the
//!   serving private key (whoever holds that can impersonate the relay anyway), through HKDF,
//!   which reveals nothing of it; it is never logged.
//! - **The same across a restart** of one relay: same key file, `instance` and server id.
//! - **Different per relay** of a fleet, even with one serving key behind a balancer: instance
//!   and server id are in the derivation. RFC 9000 §21.11: endpoints that share a reset key must
//!   only ever get a connection ID's packets where that connection lives (or has died). A UDP
//!   balancer hashing the source address sends an agent's packets to another relay after a NAT
//!   rebinding, or when someone replays them from another port; a relay with the same key would
//!   reset that live tunnel (and show its token to whoever sent the packet). A relay with a key of
//!   its own answers such a packet with a token the agent does not take. Two live relays with both
//!   the same instance name and server id would share it, but relays behind one balancer need
//!   distinct ones already (registry keys, routing by connection ID).
//! - **Per endpoint**: `"agents"` names the agents' endpoint, so that another endpoint deriving
//!   its key this way from the same inputs would get another.
//!
//! The agent keeps quinn's random key: it is the client, and a restarted agent has a new UDP
//! port, so no packet of its old connection reaches it to answer; its new hello replaces its old
//! session at the relay.

use std::sync::Arc;

use ring::{hkdf, hmac};
use rustls::pki_types::PrivateKeyDer;

use crate::cid::ServerId;

/// The HKDF salt: names the scheme and its version.
const LABEL: &[u8] = b"hawser quic stateless reset v1";

/// The endpoint the key is for, first in HKDF's info.
const ENDPOINT: &[u8] = b"agents";

/// The stateless-reset key of the agents' endpoint of relay `instance` with `server_id`, serving
/// with `serving_key`.
pub fn reset_key(serving_key: &PrivateKeyDer<'_>, server_id: ServerId, instance: &str) -> Arc<hmac::Key> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, LABEL).extract(serving_key.secret_der());
    let server_id = server_id.octets();
    // The server id has a fixed length, so the parts cannot run into each other.
    let info = [ENDPOINT, b"\0", &server_id, instance.as_bytes()];
    let okm = prk
        .expand(&info, hmac::HMAC_SHA256)
        .expect("32 octets is within HKDF-SHA256's output limit of 8160");
    Arc::new(hmac::Key::from(okm))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::PrivatePkcs8KeyDer;

    use super::*;

    fn key(octets: &[u8]) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(octets.to_vec()))
    }

    /// The token relay `instance` (its server id derived) serving with `serving` gives for one
    /// connection ID.
    fn token(serving: &[u8], instance: &str) -> Vec<u8> {
        token_with(serving, ServerId::from_instance(instance), instance)
    }

    fn token_with(serving: &[u8], server_id: ServerId, instance: &str) -> Vec<u8> {
        let key = reset_key(&key(serving), server_id, instance);
        hmac::sign(&key, &[7; crate::cid::CID_LEN]).as_ref().to_vec()
    }

    #[test]
    fn a_relay_restarted_as_itself_gets_its_key_again_and_any_change_gives_another() {
        let first = token(b"serving key", "relay-0");
        assert_eq!(first, token(b"serving key", "relay-0"));
        assert_ne!(
            first,
            token(b"serving key", "relay-1"),
            "relays of a fleet sharing a serving key"
        );
        assert_ne!(
            first,
            token_with(b"serving key", ServerId::new([1; 8]), "relay-0"),
            "relays of one instance name with server ids of their own"
        );
        assert_ne!(first, token(b"another key", "relay-0"), "a new serving key");
    }

    #[test]
    fn the_derivation_is_pinned() {
        // Computed apart from this code (Python's hmac module, RFC 5869 by hand): a change here
        // would leave a relay restarted onto the new version unable to reset its old tunnels.
        assert_eq!(
            data_encoding::HEXLOWER.encode(&token(b"serving key", "relay-0")),
            "b8ee73524f39160676f9787c55120e258e9de3da9d6c7618490dd996926e3a7a"
        );
    }
}
