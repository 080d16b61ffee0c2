//! Streams in memory: a bounded channel of chunks each way. They behave as quinn's do where the
//! framing can tell (a dropped receiver stops the sender with code 0, a dropped sender finishes),
//! so the request path can be tested in-process without sockets or certificates.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{RecvHalf, SendHalf, StreamError};

/// No stop code yet.
const NOT_STOPPED: u64 = u64::MAX;

enum Msg {
    Chunk(Bytes),
    Reset(u32),
}

/// The sending half of an in-memory stream.
pub struct MemSend {
    tx: Option<mpsc::Sender<Msg>>,
    stop_code: Arc<AtomicU64>,
}

/// The receiving half of an in-memory stream.
pub struct MemRecv {
    rx: mpsc::Receiver<Msg>,
    stop_code: Arc<AtomicU64>,
}

/// One direction of a stream, holding at most `capacity` chunks in flight.
pub fn stream(capacity: usize) -> (MemSend, MemRecv) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stop_code = Arc::new(AtomicU64::new(NOT_STOPPED));
    (
        MemSend {
            tx: Some(tx),
            stop_code: stop_code.clone(),
        },
        MemRecv { rx, stop_code },
    )
}

/// Both directions of a stream: `(a's send, a's recv)` and `(b's send, b's recv)`.
pub fn bidi(capacity: usize) -> ((MemSend, MemRecv), (MemSend, MemRecv)) {
    let (a_send, b_recv) = stream(capacity);
    let (b_send, a_recv) = stream(capacity);
    ((a_send, a_recv), (b_send, b_recv))
}

impl MemSend {
    fn stopped(&self) -> StreamError {
        match self.stop_code.load(Ordering::Acquire) {
            NOT_STOPPED => StreamError::Stopped(0),
            code => StreamError::Stopped(code),
        }
    }
}

impl SendHalf for MemSend {
    async fn send_chunks<'a>(&'a mut self, chunks: &'a mut [Bytes]) -> Result<(), StreamError> {
        let Some(tx) = &self.tx else {
            return Err(StreamError::Closed("the stream was finished".into()));
        };
        for chunk in chunks.iter_mut() {
            let chunk = std::mem::take(chunk);
            if tx.send(Msg::Chunk(chunk)).await.is_err() {
                return Err(self.stopped());
            }
        }
        Ok(())
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        async move {
            if let Some(tx) = tx {
                tx.closed().await;
            }
        }
    }

    fn end(&mut self) {
        self.tx = None;
    }

    fn cut(&mut self, code: u32) {
        if let Some(tx) = self.tx.take() {
            // Past what is queued, as quinn discards unsent data on a reset; a full queue still
            // ends the stream (the receiver sees the close after the queued chunks).
            let _ = tx.try_send(Msg::Reset(code));
        }
    }
}

impl RecvHalf for MemRecv {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        self.rx.poll_recv(cx).map(|msg| match msg {
            Some(Msg::Chunk(chunk)) => Ok(Some(chunk)),
            Some(Msg::Reset(code)) => Err(StreamError::Reset(u64::from(code))),
            None => Ok(None),
        })
    }

    fn stop_reading(&mut self, code: u32) {
        self.stop_code.store(u64::from(code), Ordering::Release);
        self.rx.close();
    }
}
