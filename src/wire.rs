//! The tunnel's stream framing (wire version 3): one exchange per stream, no HTTP inside.
//!
//! - The relay opens a stream and sends a [`RequestHead`] (request id, the caller's credential,
//!   method, path and query, headers, trace context), then the request body as raw stream bytes
//!   ended by the stream's finish. A request without a body is finished right after its head.
//! - The agent answers with a [`ResponseHead`], then the response body the same way.
//! - An upgrade (exec, attach, port-forward) is the request head, a `101` response head, then raw
//!   bytes both ways; each side's finish is a half-close. Nothing the relay sends after the head
//!   of an upgrade request is read by the agent unless the apiserver answered `101`
//!   (CVE-2018-1002105).
//! - An exchange that ends early is a stream reset with one of the [`reset`] codes; before a
//!   response head the relay answers the caller with the matching Kubernetes `Status`.
//!
//! Body bytes move as the `Bytes` chunks the transport hands out and takes ([`body`]): Hawser's
//! code copies none of them, and no HTTP connection is built per stream.

use bytes::{Bytes, BytesMut};

use crate::transport::{RecvHalf, StreamError, next_chunk};

pub mod body;
pub mod head;
pub mod splice;

pub use head::{HeadError, RequestHead, ResponseHead};

/// Codes a stream is reset or stopped with.
pub mod reset {
    /// The other side no longer wants the exchange (the caller went away).
    pub const CANCELLED: u32 = 0;
    /// The head was malformed or too large.
    pub const BAD_HEAD: u32 = 1;
    /// What fed this stream failed mid-body (the apiserver's connection, the caller's upload).
    pub const SOURCE_FAILED: u32 = 2;
    /// The agent is shutting down.
    pub const SHUTDOWN: u32 = 3;
    /// No head arrived in time.
    pub const NO_HEAD: u32 = 4;
    /// The relay a request was forwarded to holds no tunnel of its cluster (any more).
    pub const NO_ROUTE: u32 = 5;
    /// The relay a request was forwarded to lost the agent's tunnel it put the stream on.
    pub const TUNNEL_LOST: u32 = 6;

    /// What a reset code means, for a caller's Status and the logs.
    pub fn describe(code: u64) -> &'static str {
        match code {
            0 => "the exchange was cancelled",
            1 => "the request head was refused as malformed",
            2 => "the apiserver's answer broke off",
            3 => "the agent is shutting down",
            4 => "no request head arrived in time",
            5 => "the relay it was forwarded to holds no tunnel of the cluster",
            6 => "the relay it was forwarded to lost the agent's tunnel",
            _ => "the stream was reset with an unknown code",
        }
    }
}

/// Largest head either side reads: the relay's largest request head (`limits.max_header_bytes`,
/// at most 1 MiB) with room for the credential and the rest.
pub const MAX_HEAD: usize = 1024 * 1024 + 64 * 1024;

/// Reads one length-prefixed head from `recv`: its payload, and whatever of the body came in the
/// same chunk. A head that arrives in one chunk is sliced out of it without a copy.
pub async fn read_head<R: RecvHalf>(recv: &mut R, max: usize) -> Result<(Bytes, Bytes), HeadError> {
    let (framed, rest) = read_framed_head(recv, max).await?;
    Ok((framed.slice(4..), rest))
}

/// Like [`read_head`], the head with its length prefix: as it came, to be passed on unchanged.
pub async fn read_framed_head<R: RecvHalf>(recv: &mut R, max: usize) -> Result<(Bytes, Bytes), HeadError> {
    let mut acc = BytesMut::new();
    let mut len = None;
    loop {
        let mut chunk = next_chunk(recv).await?.ok_or(HeadError::Ended)?;
        if acc.is_empty() && chunk.len() >= 4 {
            let declared = declared_len(&chunk[..4], max)?;
            if chunk.len() >= 4 + declared {
                let head = chunk.split_to(4 + declared);
                return Ok((head, chunk));
            }
        }
        while !chunk.is_empty() {
            let want = match len {
                None => 4 - acc.len(),
                Some(n) => 4 + n - acc.len(),
            };
            let taken = chunk.split_to(want.min(chunk.len()));
            acc.extend_from_slice(&taken);
            if len.is_none() && acc.len() == 4 {
                let n = declared_len(&acc, max)?;
                acc.reserve(n);
                len = Some(n);
            }
            if let Some(n) = len
                && acc.len() == 4 + n
            {
                return Ok((acc.freeze(), chunk));
            }
        }
    }
}

fn declared_len(prefix: &[u8], max: usize) -> Result<usize, HeadError> {
    let declared = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if declared > max {
        return Err(HeadError::TooLarge(declared));
    }
    Ok(declared)
}

impl From<StreamError> for HeadError {
    fn from(e: StreamError) -> Self {
        Self::Stream(e)
    }
}

#[cfg(test)]
mod tests;
