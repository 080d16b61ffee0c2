//! Request and response heads: a compact binary encoding, bounded and checked field by field.
//!
//! Hand-written rather than serde: decoding goes straight into `http` types (`Method`,
//! `HeaderMap`), each value checked as hyper would check it on an HTTP connection, with no
//! intermediate strings, and the fuzz target (`fuzz/fuzz_targets/stream_head.rs`) can state the
//! format exactly.
//!
//! ```text
//! head     = u32 length, then the payload (big-endian throughout)
//! request  = 0x01, flags, str id, u8 credential kind, str credential, str method, str target,
//!            str traceparent, headers
//! response = 0x02, flags, u16 status, headers
//! flags    = bit 0: a body follows the head; the other bits are zero
//! str      = u16 length, bytes
//! headers  = u16 count, then count × (str name, str value)
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};

use crate::proto::Credential;
use crate::transport::StreamError;

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const BODY_FOLLOWS: u8 = 1;
const ASSERTION: u8 = 1;
const CALLER_TOKEN: u8 = 2;
/// Most headers a head may carry (an `http::HeaderMap` holds at most 32,768).
pub const MAX_HEADERS: usize = 4096;

/// Why a head could not be read, decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The stream failed before the head was complete.
    #[error(transparent)]
    Stream(StreamError),
    /// The stream finished before the head was complete.
    #[error("the stream ended before its head")]
    Ended,
    /// The head is larger than allowed.
    #[error("a head of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The payload ends inside a field.
    #[error("the head is truncated")]
    Truncated,
    /// Bytes after the last field.
    #[error("the head has {0} bytes after its last field")]
    Trailing(usize),
    /// Not the kind of head expected here.
    #[error("not a {0} head")]
    WrongKind(&'static str),
    /// A field's value is not allowed.
    #[error("bad {0} in the head")]
    Bad(&'static str),
}

/// What opens a relay-opened stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Request id, the same in the relay's and the agent's logs: a plain name.
    pub request_id: String,
    /// Who the caller is, in the form this cluster's agent accepts.
    pub credential: Credential,
    /// The request method.
    pub method: Method,
    /// Path and query, as the caller sent them (origin form).
    pub target: Uri,
    /// W3C `traceparent` of the relay's span, if any (room for tracing; empty when none).
    pub traceparent: String,
    /// The request headers, hop-by-hop ones removed.
    pub headers: HeaderMap,
    /// Whether body bytes follow the head.
    pub body: bool,
}

/// What the agent answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// Whether body bytes follow the head.
    pub body: bool,
}

impl RequestHead {
    /// The length-prefixed encoding, or [`HeadError::TooLarge`] past `max` bytes.
    pub fn encode(&self, max: usize) -> Result<Bytes, HeadError> {
        let (kind, credential) = match &self.credential {
            Credential::Assertion(token) => (ASSERTION, token.as_bytes()),
            Credential::CallerToken(token) => (CALLER_TOKEN, token.as_bytes()),
        };
        let target = self.target.path_and_query().map_or("/", |pq| pq.as_str());
        let strings = [
            self.request_id.as_bytes(),
            credential,
            self.method.as_str().as_bytes(),
            target.as_bytes(),
            self.traceparent.as_bytes(),
        ];
        let len = 2 + 1 + strings.iter().map(|s| 2 + s.len()).sum::<usize>() + headers_len(&self.headers);
        let mut out = start(len, max)?;
        out.put_u8(REQUEST);
        out.put_u8(if self.body { BODY_FOLLOWS } else { 0 });
        put_str(&mut out, strings[0])?;
        out.put_u8(kind);
        for s in &strings[1..] {
            put_str(&mut out, s)?;
        }
        put_headers(&mut out, &self.headers)?;
        Ok(out.freeze())
    }

    /// Decodes a payload (without its length prefix).
    pub fn decode(payload: &[u8]) -> Result<Self, HeadError> {
        let mut r = Reader(payload);
        if r.u8()? != REQUEST {
            return Err(HeadError::WrongKind("request"));
        }
        let body = flags(r.u8()?)?;
        let request_id = plain(r.str()?, "request id")?;
        let kind = r.u8()?;
        let token = visible(r.str()?, "credential")?;
        let credential = match kind {
            ASSERTION => Credential::Assertion(token),
            CALLER_TOKEN => Credential::CallerToken(token),
            _ => return Err(HeadError::Bad("credential kind")),
        };
        let method = Method::from_bytes(r.str()?).map_err(|_| HeadError::Bad("method"))?;
        let target = origin_form(r.str()?)?;
        let traceparent = r.str()?;
        let traceparent = if traceparent.is_empty() {
            String::new()
        } else {
            visible(traceparent, "traceparent")?
        };
        let headers = r.headers()?;
        r.end()?;
        Ok(Self {
            request_id,
            credential,
            method,
            target,
            traceparent,
            headers,
            body,
        })
    }
}

impl ResponseHead {
    /// The length-prefixed encoding, or [`HeadError::TooLarge`] past `max` bytes.
    pub fn encode(&self, max: usize) -> Result<Bytes, HeadError> {
        let mut out = start(2 + 2 + headers_len(&self.headers), max)?;
        out.put_u8(RESPONSE);
        out.put_u8(if self.body { BODY_FOLLOWS } else { 0 });
        out.put_u16(self.status.as_u16());
        put_headers(&mut out, &self.headers)?;
        Ok(out.freeze())
    }

    /// Decodes a payload (without its length prefix).
    pub fn decode(payload: &[u8]) -> Result<Self, HeadError> {
        let mut r = Reader(payload);
        if r.u8()? != RESPONSE {
            return Err(HeadError::WrongKind("response"));
        }
        let body = flags(r.u8()?)?;
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| HeadError::Bad("status"))?;
        let headers = r.headers()?;
        r.end()?;
        Ok(Self { status, headers, body })
    }
}

fn headers_len(headers: &HeaderMap) -> usize {
    2 + headers
        .iter()
        .map(|(name, value)| 4 + name.as_str().len() + value.len())
        .sum::<usize>()
}

/// A buffer with the length prefix written, for a payload of `len` bytes.
fn start(len: usize, max: usize) -> Result<BytesMut, HeadError> {
    if len > max {
        return Err(HeadError::TooLarge(len));
    }
    let prefix = u32::try_from(len).map_err(|_| HeadError::TooLarge(len))?;
    let mut out = BytesMut::with_capacity(4 + len);
    out.put_u32(prefix);
    Ok(out)
}

fn put_str(out: &mut BytesMut, s: &[u8]) -> Result<(), HeadError> {
    let len = u16::try_from(s.len()).map_err(|_| HeadError::TooLarge(s.len()))?;
    out.put_u16(len);
    out.put_slice(s);
    Ok(())
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) -> Result<(), HeadError> {
    if headers.len() > MAX_HEADERS {
        return Err(HeadError::Bad("header count"));
    }
    let count = u16::try_from(headers.len()).map_err(|_| HeadError::TooLarge(headers.len()))?;
    out.put_u16(count);
    for (name, value) in headers {
        put_str(out, name.as_str().as_bytes())?;
        put_str(out, value.as_bytes())?;
    }
    Ok(())
}

fn flags(flags: u8) -> Result<bool, HeadError> {
    match flags {
        0 => Ok(false),
        BODY_FOLLOWS => Ok(true),
        _ => Err(HeadError::Bad("flags")),
    }
}

/// A request id or other name that reaches logs: 1 to 512 of `[A-Za-z0-9._-]` (the relay's ids are
/// its instance name, of up to 253, a random part and a counter).
fn plain(bytes: &[u8], what: &'static str) -> Result<String, HeadError> {
    let ok = (1..=512).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
    if !ok {
        return Err(HeadError::Bad(what));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Visible ASCII only (a token, a traceparent).
fn visible(bytes: &[u8], what: &'static str) -> Result<String, HeadError> {
    if bytes.is_empty() || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(HeadError::Bad(what));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// A path with an optional query, and nothing else (no scheme, no authority, no `*`).
fn origin_form(bytes: &[u8]) -> Result<Uri, HeadError> {
    if bytes.first() != Some(&b'/') {
        return Err(HeadError::Bad("target"));
    }
    let uri = Uri::try_from(bytes).map_err(|_| HeadError::Bad("target"))?;
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(HeadError::Bad("target"));
    }
    Ok(uri)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeadError> {
        if self.0.len() < n {
            return Err(HeadError::Truncated);
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, HeadError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, HeadError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn str(&mut self) -> Result<&'a [u8], HeadError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    fn headers(&mut self) -> Result<HeaderMap, HeadError> {
        let count = usize::from(self.u16()?);
        if count > MAX_HEADERS {
            return Err(HeadError::Bad("header count"));
        }
        // Each header takes at least 6 bytes: a count larger than that is a lie, not a reason
        // to reserve room.
        let mut headers = HeaderMap::with_capacity(count.min(self.0.len() / 6));
        for _ in 0..count {
            let name = HeaderName::from_bytes(self.str()?).map_err(|_| HeadError::Bad("header name"))?;
            let value = HeaderValue::from_bytes(self.str()?).map_err(|_| HeadError::Bad("header value"))?;
            headers
                .try_append(name, value)
                .map_err(|_| HeadError::Bad("header count"))?;
        }
        Ok(headers)
    }

    fn end(&self) -> Result<(), HeadError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(HeadError::Trailing(n)),
        }
    }
}
