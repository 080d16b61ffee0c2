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
