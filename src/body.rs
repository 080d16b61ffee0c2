//! The body type every hop uses, and how bodies are made: frames of `Bytes`, never parsed or
//! re-buffered. A leaf module: the request path's other modules build on it.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Boxed error of a body in flight.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every hop uses.
pub type Body = BoxBody<Bytes, BoxError>;

/// Boxes any body whose data is `Bytes`.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// Wraps `body` so that `thing` lives until the body is done, fails or is dropped.
pub fn hold_until_done<B, T>(body: B, thing: T) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
    T: Send + Sync + Unpin + 'static,
{
    Held {
        inner: body,
        thing: Some(thing),
    }
    .boxed()
}

struct Held<B, T> {
    inner: B,
    thing: Option<T>,
}

impl<B, T> hyper::body::Body for Held<B, T>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    T: Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.thing = None;
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps `body` so that it ends, cleanly, once `end` is cancelled: a draining relay ends the
/// watches and followed logs it carries this way, so their clients see an end of stream (and
/// re-establish them elsewhere), not a cut connection.
pub fn end_on(body: Body, end: tokio_util::sync::CancellationToken) -> Body {
    EndOn {
        inner: Some(body),
        end: Box::pin(end.cancelled_owned()),
    }
    .boxed()
}

struct EndOn {
    inner: Option<Body>,
    end: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl hyper::body::Body for EndOn {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        if self.inner.is_some() && self.end.as_mut().poll(cx).is_ready() {
            // Dropped at once: the stream under it is released.
            self.inner = None;
        }
        match self.inner.as_mut() {
            Some(inner) => std::pin::Pin::new(inner).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(hyper::body::Body::is_end_stream)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_body_ends_cleanly_when_told() {
        let (mut tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let end = tokio_util::sync::CancellationToken::new();
        let mut body = end_on(boxed(stream), end.clone());
        tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"event"))))
            .await
            .unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "event");
        end.cancel();
        assert!(body.frame().await.is_none(), "a clean end, not an error");
        assert!(
            tx.send(Ok(hyper::body::Frame::data(Bytes::new()))).await.is_err(),
            "the source was dropped"
        );
        let _ = &mut tx;
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send + Sync {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
