//! quinn's streams as [`RecvHalf`] and [`SendHalf`]: chunks as quinn hands them out
//! (`read_chunk`) and takes them (`write_all_chunks`).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::{ReadError, VarInt, WriteError};

use super::{RecvHalf, SendHalf, StreamError};

impl From<ReadError> for StreamError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Reset(code) => Self::Reset(code.into_inner()),
            other => Self::Closed(other.to_string()),
        }
    }
}

impl From<WriteError> for StreamError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Stopped(code) => Self::Stopped(code.into_inner()),
            other => Self::Closed(other.to_string()),
        }
    }
}

impl RecvHalf for quinn::RecvStream {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        // `read_chunk` is cancel-safe and its future holds no state of its own, so a fresh one per
        // poll loses nothing (quinn's own `poll_write` does the same).
        pin!(self.read_chunk(usize::MAX, true))
            .poll(cx)
            .map(|read| read.map(|chunk| chunk.map(|c| c.bytes)).map_err(Into::into))
    }

    fn stop_reading(&mut self, code: u32) {
        let _ = quinn::RecvStream::stop(self, VarInt::from_u32(code));
    }
}

impl SendHalf for quinn::SendStream {
    async fn send_chunks<'a>(&'a mut self, chunks: &'a mut [Bytes]) -> Result<(), StreamError> {
        Ok(self.write_all_chunks(chunks).await?)
    }

    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let stopped = quinn::SendStream::stopped(self);
        async move {
            let _ = stopped.await;
        }
    }

    fn end(&mut self) {
        let _ = quinn::SendStream::finish(self);
    }

    fn cut(&mut self, code: u32) {
        let _ = quinn::SendStream::reset(self, VarInt::from_u32(code));
    }
}
