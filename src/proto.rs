//! The tunnel's wire format, above QUIC.
//!
//! - The agent opens the first bidirectional stream as its control stream and
//!   sends a [`Hello`]; the relay answers with a [`Welcome`] or closes the
//!   connection.
//! - Every other stream is opened by the relay and carries one exchange in
//!   the framing of [`crate::wire`], whose request head holds the caller's
//!   [`Credential`] for this cluster (never the caller's own token unless that
//!   token is bound to this cluster).
//!
//! Each message is a frame: 4 magic bytes, a version byte, a big-endian u16
//! length, then that many bytes of JSON. Frames are small and bounded, so a
//! hostile peer cannot make the reader allocate more than [`MAX_FRAME`] (and
//! an agent that has not yet proved its cluster no more than [`MAX_HELLO`]).
//!
//! # Versions
//!
//! - 1 carried HTTP/1.1 on every stream and forwarded the caller's token in it.
//! - 2 moved the credential into a JSON header frame before the HTTP/1.1 exchange.
//! - [`VERSION`] 3 replaces HTTP/1.1 on the streams with Hawser's own framing ([`crate::wire`]).
//!
//! Relay and agent must speak the same version; a hello of another version
//! is refused with a close reason that names both, so the agent's log says
//! which side to upgrade (docs/architecture.md, "Wire versions").

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// ALPN protocol id of the tunnel.
pub const ALPN: &[u8] = b"hawser/1";
/// Magic bytes that open every frame.
const MAGIC: &[u8; 4] = b"HWSR";
/// The wire version this build speaks.
pub const VERSION: u8 = 3;
/// Largest JSON payload a control frame may carry.
pub const MAX_FRAME: usize = 8 * 1024;
/// Largest hello: read before the agent has proved anything, so kept small.
pub const MAX_HELLO: usize = 2 * 1024;

/// Response header by which the agent tells the relay that it refused the request because the
/// caller failed to authenticate (value: which credential: `cluster-token` for a cluster token
/// TokenReview refused, `caller-token` for a caller's own token the agent refused), so the relay
/// can charge the caller's failed-authentication budget; the relay removes it before answering.
/// The agent sets it only on its own refusals and removes it from the apiserver's responses.
pub const AUTH_FAILED_HEADER: &str = "hawser-auth-failed";

/// Errors reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The stream ended or failed.
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The frame does not start with the magic bytes.
    #[error("not a hawser frame")]
    BadMagic,
    /// A version this build does not speak.
    #[error("the peer speaks wire version {0}; this build speaks {VERSION}")]
    UnsupportedVersion(u8),
    /// The payload is larger than allowed.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The payload is not the expected JSON.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// The agent's first message: which cluster it serves, its proof, and how it authenticates callers.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The cluster this agent serves.
    pub cluster: String,
    /// The cluster's agent token (the relay keeps only its SHA-256).
    pub token: String,
    /// Agent instance name, for logs and audit.
    pub instance: String,
    /// The callers' credential this agent checks; the relay refuses an agent whose
    /// expectation does not match the relay's configuration for the cluster.
    pub accepts: Accepts,
    /// Which of the agent's tunnels this is (0 for the first): a reconnect replaces the session
    /// of the same instance and link only, so an agent's tunnels never replace each other.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub link: u8,
    /// The relays the agent's other tunnels are on (and the one this tunnel leaves): a relay
    /// named here refuses the tunnel (close code 7), so no request reaches a tunnel the agent
    /// would close at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
    /// A check, not a tunnel (`hawser doctor`): judged exactly as a hello, answered with a welcome
    /// (session 0) or a refusal, and never registered, so it cannot replace the agent's session.
    /// Not sent when false, so an agent's hello reads as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("cluster", &self.cluster)
            .field("token", &"<redacted>")
            .field("instance", &self.instance)
            .field("accepts", &self.accepts)
            .field("link", &self.link)
            .field("held", &self.held)
            .field("probe", &self.probe)
            .finish()
    }
}

/// What an agent accepts as proof of a caller's identity.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Accepts {
    /// Assertions the relay signs, bound to this cluster, from this issuer.
    Assertion {
        /// The assertions' `iss`.
        issuer: String,
    },
    /// The caller's own token, carrying one of these audiences (the cluster's own).
    CallerToken {
        /// Every audience the agent's issuers accept.
        audiences: Vec<String>,
    },
}

/// The relay's answer to an accepted [`Hello`]. Unknown fields are ignored, so a relay may add
/// some for newer agents.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Relay instance name, for logs and audit; an agent keeps its tunnels on distinct relays.
    pub relay: String,
    /// Id of this session in the relay's registry.
    pub session: u64,
    /// Whether the relay is one of a fleet: an agent without a `connections` setting then
    /// holds two tunnels, to two relays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
}

/// What the relay may tell a welcomed agent on the control stream, besides why it closes.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Notice {
    /// The relay is draining: open a tunnel to another relay, then retire this one (end your
    /// side of the control stream); the relay routes nothing new to a retired tunnel and closes
    /// it once its exchanges are done or its drain deadline passes.
    Move {
        /// Why, for the agent's log.
        reason: String,
    },
}

/// What an agent may tell the relay on a QUIC tunnel's control stream after the welcome.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentNotice {
    /// The agent moved to another tunnel: route nothing new here (over TCP the agent ends its
    /// side of the control stream instead).
    Retire,
}

/// A frame on the control stream after the welcome: a notice, or why the relay closes (TCP).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum Control {
    /// A notice.
    Notice(Notice),
    /// The relay closes the tunnel.
    Closing(Closing),
}

/// The proof of a caller's identity that rides a stream: never valid at another cluster.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Credential {
    /// A short-lived assertion the relay signed after validating the caller, bound to the cluster.
    Assertion(String),
    /// The caller's own token, whose audience binds it to this cluster alone.
    CallerToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Assertion(_) => "Assertion(<redacted>)",
            Self::CallerToken(_) => "CallerToken(<redacted>)",
        })
    }
}

/// Why the relay closes a tunnel over TCP: its answer to a hello it refuses, and the last frame
/// on the control stream (QUIC says the same in its connection close).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Closing {
    /// One of the relay's close codes.
    pub code: u32,
    /// Why, for the agent's log.
    pub reason: String,
}

/// The relay's answer to a hello over TCP.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum Answer {
    /// Registered.
    Welcome(Welcome),
    /// Refused.
    Closing(Closing),
}

/// The close code of a tunnel refused because the hello named this relay in `held`.
pub const HELD_HERE: u32 = 7;

/// Writes one frame holding `msg`.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtoError> {
    w.write_all(&frame_bytes(msg)?).await?;
    Ok(())
}

/// One frame holding `msg`, as bytes.
pub fn frame_bytes<T: Serialize>(msg: &T) -> Result<bytes::Bytes, ProtoError> {
    let payload = serde_json::to_vec(msg)?;
    let len = u16::try_from(payload.len())
        .ok()
        .filter(|&l| usize::from(l) <= MAX_FRAME)
        .ok_or(ProtoError::TooLarge(payload.len()))?;
    let mut buf = Vec::with_capacity(7 + payload.len());
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&payload);
    Ok(buf.into())
}

/// The first frame in `buf` and how many bytes it took, or `None` while `buf` holds only part of
/// it (for readers that gather a stream's chunks themselves).
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, ProtoError> {
    let Some(head) = buf.get(..7) else {
        return Ok(None);
    };
    if &head[..4] != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    if head[4] != VERSION {
        return Err(ProtoError::UnsupportedVersion(head[4]));
    }
    let len = usize::from(u16::from_be_bytes([head[5], head[6]]));
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    match buf.get(7..7 + len) {
        Some(payload) => Ok(Some((serde_json::from_slice(payload)?, 7 + len))),
        None => Ok(None),
    }
}

/// Reads one frame of at most [`MAX_FRAME`] bytes.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<T, ProtoError> {
    read_frame_limited(r, MAX_FRAME).await
}

/// Reads one frame whose payload may be at most `max` bytes (never more than [`MAX_FRAME`]).
pub async fn read_frame_limited<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<T, ProtoError> {
    let mut head = [0u8; 7];
    r.read_exact(&mut head).await?;
    if &head[..4] != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    if head[4] != VERSION {
        return Err(ProtoError::UnsupportedVersion(head[4]));
    }
    let len = usize::from(u16::from_be_bytes([head[5], head[6]]));
    if len > max.min(MAX_FRAME) {
        return Err(ProtoError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(serde_json::from_slice(&payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hello as relays before probes read it.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct OldHello {
        cluster: String,
        token: String,
        instance: String,
        accepts: Accepts,
        #[serde(default)]
        link: u8,
        #[serde(default)]
        held: Vec<String>,
    }

    #[tokio::test]
    async fn round_trip() {
        let welcome = Welcome {
            relay: "relay-0".into(),
            session: 7,
            fleet: false,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &welcome).await.unwrap();
        let back: Welcome = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, welcome);
    }

    #[test]
    fn frames_decode_once_whole_and_notices_and_closings_tell_apart() {
        let mut buf = frame_bytes(&Notice::Move {
            reason: "draining".into(),
        })
        .unwrap()
        .to_vec();
        buf.extend_from_slice(
            &frame_bytes(&Closing {
                code: 3,
                reason: "bye".into(),
            })
            .unwrap(),
        );
        assert!(
            decode_frame::<Control>(&buf[..9]).unwrap().is_none(),
            "a partial frame waits"
        );
        let (first, used) = decode_frame::<Control>(&buf).unwrap().unwrap();
        assert_eq!(
            first,
            Control::Notice(Notice::Move {
                reason: "draining".into()
            })
        );
        let (second, rest) = decode_frame::<Control>(&buf[used..]).unwrap().unwrap();
        assert_eq!(
            second,
            Control::Closing(Closing {
                code: 3,
                reason: "bye".into()
            })
        );
        assert_eq!(used + rest, buf.len());
        assert!(matches!(
            decode_frame::<Control>(b"XXXX\x03\x00\x00"),
            Err(ProtoError::BadMagic)
        ));
        // A newer relay's welcome field is ignored; the first tunnel's hello is as before.
        let welcome: Welcome = serde_json::from_str(r#"{"relay":"r","session":1,"fleet":true,"later":1}"#).unwrap();
        assert!(welcome.fleet);
        let hello = Hello {
            cluster: "c".into(),
            token: "t".into(),
            instance: "i".into(),
            accepts: Accepts::Assertion { issuer: "i".into() },
            link: 0,
            held: Vec::new(),
            probe: false,
        };
        let json = serde_json::to_string(&hello).unwrap();
        assert!(!json.contains("link") && !json.contains("probe"), "{json}");
        // A relay that predates probes reads one as malformed (`deny_unknown_fields`): it refuses
        // it as a bad hello and registers nothing.
        let probe = serde_json::to_string(&Hello { probe: true, ..hello }).unwrap();
        let old = serde_json::from_str::<OldHello>(&probe).unwrap_err();
        assert!(old.to_string().contains("unknown field `probe`"), "{old}");
    }

    #[tokio::test]
    async fn rejects_bad_magic_version_and_size() {
        let mut bad = b"XXXX\x03\x00\x00".as_slice();
        assert!(matches!(
            read_frame::<_, Welcome>(&mut bad).await,
            Err(ProtoError::BadMagic)
        ));
        let mut v1 = b"HWSR\x01\x00\x00".as_slice();
        let old = read_frame::<_, Welcome>(&mut v1).await.unwrap_err();
        assert!(matches!(old, ProtoError::UnsupportedVersion(1)));
        assert_eq!(
            old.to_string(),
            "the peer speaks wire version 1; this build speaks 3",
            "a mismatch names both versions"
        );
        let mut huge = b"HWSR\x03\xff\xff".as_slice();
        assert!(matches!(
            read_frame::<_, Welcome>(&mut huge).await,
            Err(ProtoError::TooLarge(65535))
        ));
        let mut short = b"HWSR\x03\x00\x10{}".as_slice();
        assert!(matches!(
            read_frame::<_, Welcome>(&mut short).await,
            Err(ProtoError::Io(_))
        ));
        let mut unknown = b"HWSR\x03\x00\x0b{\"x\":\"y\"}\x00\x00".as_slice();
        assert!(matches!(
            read_frame::<_, Welcome>(&mut unknown).await,
            Err(ProtoError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_hello_is_read_with_a_smaller_limit() {
        let hello = Hello {
            link: 0,
            held: Vec::new(),
            probe: false,
            cluster: "c".into(),
            token: "t".repeat(MAX_HELLO),
            instance: "a".into(),
            accepts: Accepts::Assertion { issuer: "i".into() },
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &hello).await.unwrap();
        assert!(matches!(
            read_frame_limited::<_, Hello>(&mut buf.as_slice(), MAX_HELLO).await,
            Err(ProtoError::TooLarge(_))
        ));
        assert_eq!(read_frame::<_, Hello>(&mut buf.as_slice()).await.unwrap(), hello);
    }

    #[test]
    fn debug_hides_tokens_and_credentials() {
        let hello = Hello {
            link: 0,
            held: Vec::new(),
            probe: false,
            cluster: "c".into(),
            token: "s3cret".into(),
            instance: "a".into(),
            accepts: Accepts::CallerToken {
                audiences: vec!["aud".into()],
            },
        };
        assert!(!format!("{hello:?}").contains("s3cret"));
        assert!(!format!("{:?}", Credential::CallerToken("s3cret".into())).contains("s3cret"));
        assert!(!format!("{:?}", Credential::Assertion("s3cret".into())).contains("s3cret"));
    }
}
