//! Bodies between hyper and a tunnel stream, chunk for chunk: what the stream hands out becomes a
//! hyper data frame (packet-sized pieces that are already waiting gathered into one, see
//! [`RecvBody`]), and a hyper data frame is handed to the stream without a copy.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::transport::{RecvHalf, SendHalf, StreamError};

/// Most chunks handed to the stream in one write, when the body has several ready.
const BATCH: usize = 16;

/// A body read from a stream until its finish. `first` is what came with the head.
///
/// QUIC hands out one packet's worth at a time (about 1.2 KiB on the Internet's MTU). Handed on one
/// by one they would become as many HTTP/2 DATA frames, TLS records and wake-ups at the caller, which
/// cost far more than the bytes: so pieces that are already waiting when one is taken are gathered
/// into one frame of up to [`GATHER`] bytes. That is the one copy on the data path, and only of what
/// arrived in small pieces; a piece taken alone goes on as it came.
pub struct RecvBody<R> {
    first: Option<Bytes>,
    recv: Option<R>,
    length: Option<u64>,
    /// A failure met while gathering, reported after the bytes before it.
    failed: Option<StreamError>,
}

/// The most bytes gathered into one frame.
pub const GATHER: usize = 64 * 1024;

impl<R: RecvHalf> RecvBody<R> {
    /// The body that follows a head; `length` is its `Content-Length`, if it has one.
    pub fn new(first: Bytes, recv: R, length: Option<u64>) -> Self {
        Self {
            first: (!first.is_empty()).then_some(first),
            recv: Some(recv),
            length,
            failed: None,
        }
    }
}

impl<R: RecvHalf> hyper::body::Body for RecvBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(e) = self.failed.take() {
            self.recv = None;
            return Poll::Ready(Some(Err(Box::new(BrokenOff(e)))));
        }
        let this = &mut *self;
        let taken = match this.first.take() {
            Some(first) => first,
            None => {
                let Some(recv) = this.recv.as_mut() else {
                    return Poll::Ready(None);
                };
                match recv.poll_chunk(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(chunk))) => chunk,
                    Poll::Ready(Ok(None)) => {
                        this.recv = None;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Err(e)) => {
                        this.recv = None;
                        return Poll::Ready(Some(Err(Box::new(BrokenOff(e)))));
                    }
                }
            }
        };
        Poll::Ready(Some(Ok(Frame::data(this.gather(taken, cx)))))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.recv.is_none() && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl<R: RecvHalf> RecvBody<R> {
    /// `taken`, with whatever pieces are already waiting behind it, up to [`GATHER`] bytes.
    fn gather(&mut self, taken: Bytes, cx: &mut Context<'_>) -> Bytes {
        if taken.len() >= GATHER / 2 {
            return taken;
        }
        let Some(recv) = self.recv.as_mut() else {
            return taken;
        };
        let mut gathered: Option<bytes::BytesMut> = None;
        loop {
            let room = GATHER - gathered.as_ref().map_or(taken.len(), |g| g.len());
            if room == 0 {
                break;
            }
            match recv.poll_chunk(cx) {
                Poll::Ready(Ok(Some(mut next))) => {
                    let buf = gathered.get_or_insert_with(|| {
                        let mut buf = bytes::BytesMut::with_capacity(GATHER);
                        buf.extend_from_slice(&taken);
                        buf
                    });
                    if next.len() > room {
                        // Too big to fit: the rest goes first next time.
                        buf.extend_from_slice(&next.split_to(room));
                        self.first = Some(next);
                        break;
                    }
                    buf.extend_from_slice(&next);
                }
                Poll::Ready(Ok(None)) => {
                    self.recv = None;
                    break;
                }
                Poll::Ready(Err(e)) => {
                    self.failed = Some(e);
                    break;
                }
                Poll::Pending => break,
            }
        }
        gathered.map_or(taken, bytes::BytesMut::freeze)
    }
}

/// A body that broke off: the stream was reset, or the tunnel went away.
#[derive(Debug, thiserror::Error)]
#[error("the body broke off: {0}")]
pub struct BrokenOff(pub StreamError);

/// How sending a body ended early.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The body's source failed.
    #[error("the body's source failed: {0}")]
    Source(BoxError),
    /// The stream would not take it.
    #[error(transparent)]
    Sink(StreamError),
}

/// Sends `body` on `send`, chunk for chunk, several at once when several are ready. Trailers are
/// dropped (the Kubernetes API does not use them). Does not finish the stream. Ends as soon as
/// the peer stops reading, even while the body has nothing to give (a quiet watch).
pub async fn send_body<S: SendHalf>(mut body: Body, send: &mut S) -> Result<u64, PumpError> {
    let mut sent = 0u64;
    let mut batch: Vec<Bytes> = Vec::with_capacity(BATCH);
    let stopped = send.stopped();
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = &mut stopped => return Err(PumpError::Sink(StreamError::Stopped(0))),
        };
        let Some(frame) = frame else {
            return Ok(sent);
        };
        push(frame.map_err(PumpError::Source)?, &mut batch);
        // Whatever else is ready now goes in the same write.
        let ended = gather_ready(&mut body, &mut batch)?;
        sent += batch.iter().map(|b| b.len() as u64).sum::<u64>();
        if !batch.is_empty() {
            send.send_chunks(&mut batch).await.map_err(PumpError::Sink)?;
            batch.clear();
        }
        if ended {
            return Ok(sent);
        }
    }
}

/// Sends `head`, then `body` as [`send_body`] does, with whatever of the body is ready at once in
/// the same write as the head: a small answer leaves in one write (one wake-up of the tunnel's
/// connection task) rather than two. Counts only body bytes.
pub async fn send_head_and_body<S: SendHalf>(head: Bytes, mut body: Body, send: &mut S) -> Result<u64, PumpError> {
    let mut batch: Vec<Bytes> = Vec::with_capacity(BATCH);
    batch.push(head);
    let ended = gather_ready(&mut body, &mut batch)?;
    let sent = batch[1..].iter().map(|b| b.len() as u64).sum::<u64>();
    send.send_chunks(&mut batch).await.map_err(PumpError::Sink)?;
    if ended {
        return Ok(sent);
    }
    Ok(sent + send_body(body, send).await?)
}

/// Adds the frames `body` has ready now (without waiting) to `batch`, up to a batch; whether the
/// body ended.
fn gather_ready(body: &mut Body, batch: &mut Vec<Bytes>) -> Result<bool, PumpError> {
    use futures_util::FutureExt;
    while batch.len() < BATCH {
        match body.frame().now_or_never() {
            Some(Some(frame)) => push(frame.map_err(PumpError::Source)?, batch),
            Some(None) => return Ok(true),
            None => break,
        }
    }
    Ok(false)
}

fn push(frame: Frame<Bytes>, batch: &mut Vec<Bytes>) {
    if let Ok(data) = frame.into_data()
        && !data.is_empty()
    {
        batch.push(data);
    }
}
