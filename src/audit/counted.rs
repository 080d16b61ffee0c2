//! A body counted into its exchange's audit record as its frames pass.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Frame;

use super::Audit;
use crate::body::{Body, BoxError};

/// A body whose data bytes are counted into its exchange's record.
pub(super) struct Counted {
    pub inner: Body,
    pub audit: Option<Audit>,
    /// Bytes from the caller (else towards it).
    pub inbound: bool,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(audit)) = (frame.data_ref(), &self.audit) {
                    let n = data.len() as u64;
                    if self.inbound {
                        audit.add_in(n)
                    } else {
                        audit.add_out(n)
                    }
                }
            }
            // Done: let the record close now rather than when hyper drops the body.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.audit = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
