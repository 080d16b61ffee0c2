//! QUIC connection IDs that carry the relay's server id, so that a load balancer routing by
//! connection ID keeps an agent on its relay when the agent's address changes.
//!
//! Several relays can stand behind one UDP load balancer. One that hashes the address 4-tuple
//! loses an agent whose NAT rebinds or which migrates: its packets come from a new address and
//! may reach a relay that does not hold its connection. Balancers that route QUIC by destination
//! connection ID read a server id out of the ID the relay chose instead: QUIC-LB
//! ([draft-ietf-quic-load-balancers]) and AWS NLB's QUIC pass-through, which routes on an 8-octet
//! server id registered per target (written there as `0x` and 16 hex digits).
//!
//! Every connection ID the relay issues (the one its handshake packets carry, and each one it
//! hands out later in NEW_CONNECTION_ID frames) is [`CID_LEN`] octets, QUIC v1's maximum:
//!
//! ```text
//! octet  0      first octet: config rotation (top 3 bits, 0..=6), then the length of the
//!               rest of the ID, 19 (low 5 bits: the draft's length self-encoding)
//! octets 1..9   server id, 8 octets, in plaintext
//! octets 9..20  nonce, 11 random octets
//! ```
//!
//! Plaintext, as the draft's plaintext algorithm and AWS NLB have it: no balancer here shares a
//! key with the relays, so the draft's AES-based algorithms, which hide the server id from
//! observers, can come when one does. What plaintext shows an observer is which relay an ID
//! belongs to, nothing about which connection: the nonce comes from a cryptographic RNG, and its
//! 88 bits make the IDs of one relay unlinkable to each other and, in practice, unique (quinn
//! also draws again if a new ID equals one in use). Rotation `0b111` is left out: the draft
//! reserves it for IDs a balancer must route by 4-tuple.
//!
//! The agent's first Initial packet carries an ID the agent chose; a balancer routes it by its
//! fallback (a 4-tuple hash), and the relay's answer gives the agent routable IDs from then on.
//!
//! [draft-ietf-quic-load-balancers]: https://datatracker.ietf.org/doc/draft-ietf-quic-load-balancers/

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Octets in every connection ID the relay issues (QUIC v1 allows at most 20).
pub const CID_LEN: usize = 20;
/// Octets in a server id.
pub const SERVER_ID_LEN: usize = 8;
/// Where the server id sits in a connection ID: right after the first octet.
pub const SERVER_ID_RANGE: std::ops::Range<usize> = 1..1 + SERVER_ID_LEN;

/// The 8 octets that name one relay to a balancer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct ServerId([u8; SERVER_ID_LEN]);

/// Why a configured server id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerIdError {
    /// Not 16 hex digits long (after an optional `0x`): how many there are.
    #[error("a server id is 16 hex digits (8 octets, optionally after 0x), not {0}")]
    Length(usize),
    /// A character that is not a hex digit: its position, from 1.
    #[error("a server id is 16 hex digits; character {0} is not a hex digit")]
    NotHex(usize),
}

impl ServerId {
    /// A server id of these octets.
    pub const fn new(octets: [u8; SERVER_ID_LEN]) -> Self {
        Self(octets)
    }

    /// The server id of a relay that configures none: the first 8 octets of the SHA-256 of its
    /// instance name, so that it stays the same across restarts and differs between relays with
    /// different names.
    pub fn from_instance(instance: &str) -> Self {
        let digest = Sha256::digest(instance.as_bytes());
        let mut octets = [0; SERVER_ID_LEN];
        octets.copy_from_slice(&digest[..SERVER_ID_LEN]);
        Self(octets)
    }

    /// The octets.
    pub const fn octets(&self) -> [u8; SERVER_ID_LEN] {
        self.0
    }
}

impl FromStr for ServerId {
    type Err = ServerIdError;

    /// 16 hex digits in either case, optionally after `0x` (AWS NLB writes them that way).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        let prefix = text.len() - digits.len();
        if let Some(i) = digits.chars().position(|c| !c.is_ascii_hexdigit()) {
            return Err(ServerIdError::NotHex(prefix + i + 1));
        }
        // All ASCII from here: the length in octets is the length in characters.
        if digits.len() != 2 * SERVER_ID_LEN {
            return Err(ServerIdError::Length(digits.len()));
        }
        let mut octets = [0; SERVER_ID_LEN];
        data_encoding::HEXLOWER_PERMISSIVE
            .decode_mut(digits.as_bytes(), &mut octets)
            .map_err(|e| ServerIdError::NotHex(prefix + e.error.position + 1))?;
        Ok(Self(octets))
    }
}

impl TryFrom<String> for ServerId {
    type Error = ServerIdError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// Lowercase hex, 16 digits (AWS NLB's `QuicServerId` is `0x` followed by this).
impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId({self})")
    }
}

/// The config rotation codepoint in a connection ID's top 3 bits, 0 to 6 (7 is reserved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigRotation(u8);

impl ConfigRotation {
    /// Codepoint `bits`; `None` for 7 (reserved by the draft for unroutable IDs) and above.
    pub const fn new(bits: u8) -> Option<Self> {
        if bits <= 6 { Some(Self(bits)) } else { None }
    }

    /// The codepoint.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

/// Makes every connection ID the relay issues carry its server id (layout in the module doc).
#[derive(Debug, Clone, Copy)]
pub struct ServerIdGenerator {
    first_octet: u8,
    server_id: ServerId,
}

impl ServerIdGenerator {
    /// A generator for `server_id` under config rotation `rotation`.
    pub const fn new(server_id: ServerId, rotation: ConfigRotation) -> Self {
        Self {
            first_octet: (rotation.bits() << 5) | (CID_LEN - 1) as u8,
            server_id,
        }
    }

    /// The first octet of every ID: rotation, then the length of the rest.
    pub const fn first_octet(&self) -> u8 {
        self.first_octet
    }

    /// The server id every ID carries.
    pub const fn server_id(&self) -> ServerId {
        self.server_id
    }
}

impl ConnectionIdGenerator for ServerIdGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut octets = [0; CID_LEN];
        octets[0] = self.first_octet;
        octets[SERVER_ID_RANGE].copy_from_slice(&self.server_id.0);
        // The thread RNG is a CSPRNG: quinn requires IDs an observer cannot correlate.
        rand::rng().fill_bytes(&mut octets[SERVER_ID_RANGE.end..]);
        ConnectionId::new(&octets)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests;
