//! The tunnel's wire format, above QUIC.
//!
//! - The agent opens the first bidirectional stream as its control stream and
//!   sends a [`Hello`]; the relay answers with a [`Welcome`] or closes the
//!   connection.
//! - Every other stream is opened by the relay and carries one HTTP/1.1
//!   exchange, preceded by a [`StreamHeader`].
//!
//! Each message is a frame: 4 magic bytes, a version byte, a big-endian u16
//! length, then that many bytes of JSON. Frames are small and bounded, so a
//! hostile peer cannot make the reader allocate more than [`MAX_FRAME`].

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// ALPN protocol id of the tunnel.
pub const ALPN: &[u8] = b"hawser/1";
/// Magic bytes that open every frame.
const MAGIC: &[u8; 4] = b"HWSR";
/// The only wire version so far.
const VERSION: u8 = 1;
/// Largest JSON payload a frame may carry.
pub const MAX_FRAME: usize = 16 * 1024;

/// Response header by which the agent tells the relay that it refused the request because the
/// caller failed to authenticate (value: which credential, e.g. `cluster-token` for a cluster
/// token TokenReview refused), so the relay can charge the caller's failed-authentication budget.
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
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The payload is larger than allowed.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The payload is not the expected JSON.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// The agent's first message: which cluster it serves, and its proof.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The cluster this agent serves.
    pub cluster: String,
    /// The cluster's agent token (the relay keeps only its SHA-256).
    pub token: String,
    /// Agent instance name, for logs and audit.
    pub instance: String,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("cluster", &self.cluster)
            .field("token", &"<redacted>")
            .field("instance", &self.instance)
            .finish()
    }
}

/// The relay's answer to an accepted [`Hello`].
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// Relay instance name, for logs and audit.
    pub relay: String,
    /// Id of this session in the relay's registry.
    pub session: u64,
}

/// What a relay-opened stream carries.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    /// Request id, the same in the relay's and the agent's logs.
    pub request_id: String,
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtoError> {
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
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<T, ProtoError> {
    let mut head = [0u8; 7];
    r.read_exact(&mut head).await?;
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
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(serde_json::from_slice(&payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let header = StreamHeader {
            request_id: "r-1".into(),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &header).await.unwrap();
        let back: StreamHeader = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, header);
    }

    #[tokio::test]
    async fn rejects_bad_magic_version_and_size() {
        let mut bad = b"XXXX\x01\x00\x00".as_slice();
        assert!(matches!(
            read_frame::<_, StreamHeader>(&mut bad).await,
            Err(ProtoError::BadMagic)
        ));
        let mut v2 = b"HWSR\x02\x00\x00".as_slice();
        assert!(matches!(
            read_frame::<_, StreamHeader>(&mut v2).await,
            Err(ProtoError::UnsupportedVersion(2))
        ));
        let mut huge = b"HWSR\x01\xff\xff".as_slice();
        assert!(matches!(
            read_frame::<_, StreamHeader>(&mut huge).await,
            Err(ProtoError::TooLarge(65535))
        ));
        let mut short = b"HWSR\x01\x00\x10{}".as_slice();
        assert!(matches!(
            read_frame::<_, StreamHeader>(&mut short).await,
            Err(ProtoError::Io(_))
        ));
        let mut unknown = b"HWSR\x01\x00\x0b{\"x\":\"y\"}\x00\x00".as_slice();
        assert!(matches!(
            read_frame::<_, StreamHeader>(&mut unknown).await,
            Err(ProtoError::Malformed(_))
        ));
    }

    #[test]
    fn hello_debug_hides_the_token() {
        let hello = Hello {
            cluster: "c".into(),
            token: "s3cret".into(),
            instance: "a".into(),
        };
        assert!(!format!("{hello:?}").contains("s3cret"));
    }
}
