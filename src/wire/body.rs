//! Bodies between hyper and a tunnel stream, chunk for chunk: what the stream hands out becomes a
//! hyper data frame, and a hyper data frame is handed to the stream, with no copy in between.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use crate::forward::{Body, BoxError};
use crate::transport::{RecvHalf, SendHalf, StreamError};

/// Most chunks handed to the stream in one write, when the body has several ready.
const BATCH: usize = 16;

/// A body read from a stream until its finish. `first` is what came with the head.
pub struct RecvBody<R> {
    first: Option<Bytes>,
    recv: Option<R>,
    length: Option<u64>,
}

impl<R: RecvHalf> RecvBody<R> {
    /// The body that follows a head; `length` is its `Content-Length`, if it has one.
    pub fn new(first: Bytes, recv: R, length: Option<u64>) -> Self {
        Self {
            first: (!first.is_empty()).then_some(first),
            recv: Some(recv),
            length,
        }
    }
}

impl<R: RecvHalf> hyper::body::Body for RecvBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(recv) = self.recv.as_mut() else {
            return Poll::Ready(None);
        };
        match recv.poll_chunk(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(chunk))) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            Poll::Ready(Ok(None)) => {
                self.recv = None;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.recv = None;
                Poll::Ready(Some(Err(Box::new(BrokenOff(e)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.recv.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
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
    use futures_util::FutureExt;
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
        let mut ended = false;
        while batch.len() < BATCH {
            match body.frame().now_or_never() {
                Some(Some(frame)) => push(frame.map_err(PumpError::Source)?, &mut batch),
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
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

fn push(frame: Frame<Bytes>, batch: &mut Vec<Bytes>) {
    if let Ok(data) = frame.into_data()
        && !data.is_empty()
    {
        batch.push(data);
    }
}
