//! Streams in memory: a bounded channel of chunks each way. They behave as quinn's do where the
//! framing can tell (a dropped receiver stops the sender with code 0, a dropped sender finishes),
//! so the request path can be tested in-process without sockets or certificates.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{RecvHalf, SendHalf, StreamError};

/// No stop (or reset) code yet.
const NOT_STOPPED: u64 = u64::MAX;

enum Msg {
    Chunk(Bytes),
    Reset(u32),
}

/// The sending half of an in-memory stream.
pub struct MemSend {
    tx: Option<mpsc::Sender<Msg>>,
    stop_code: Arc<AtomicU64>,
    reset_code: Arc<AtomicU64>,
}

/// The receiving half of an in-memory stream.
pub struct MemRecv {
    rx: mpsc::Receiver<Msg>,
    stop_code: Arc<AtomicU64>,
    reset_code: Arc<AtomicU64>,
}

/// One direction of a stream, holding at most `capacity` chunks in flight.
pub fn stream(capacity: usize) -> (MemSend, MemRecv) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stop_code = Arc::new(AtomicU64::new(NOT_STOPPED));
    let reset_code = Arc::new(AtomicU64::new(NOT_STOPPED));
    (
        MemSend {
            tx: Some(tx),
            stop_code: stop_code.clone(),
            reset_code: reset_code.clone(),
        },
        MemRecv {
            rx,
            stop_code,
            reset_code,
        },
    )
}

/// The receiving half of a stream that gets `parts` as separate chunks, then its end (for tests
/// of readers that must gather what arrives split).
#[cfg(test)]
pub fn sent(parts: Vec<Bytes>) -> MemRecv {
    let (mut send, recv) = stream(4);
    tokio::spawn(async move {
        for part in parts {
            if super::write_chunk(&mut send, part).await.is_err() {
                return;
            }
        }
        send.end();
    });
    recv
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
            // Recorded before the channel closes, so a receiver that finds it closed (the reset
            // did not fit a full queue) still reads a reset, never a clean finish.
            self.reset_code.store(u64::from(code), Ordering::Release);
            let _ = tx.try_send(Msg::Reset(code));
        }
    }
}

impl RecvHalf for MemRecv {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        self.rx.poll_recv(cx).map(|msg| match msg {
            Some(Msg::Chunk(chunk)) => Ok(Some(chunk)),
            Some(Msg::Reset(code)) => Err(StreamError::Reset(u64::from(code))),
            None => match self.reset_code.load(Ordering::Acquire) {
                NOT_STOPPED => Ok(None),
                code => Err(StreamError::Reset(code)),
            },
        })
    }

    fn stop_reading(&mut self, code: u32) {
        self.stop_code.store(u64::from(code), Ordering::Release);
        self.rx.close();
    }
}

/// Streams a relay-side [`Tunnel`] may have waiting for the agent side to accept.
const ACCEPT_QUEUE: usize = 64;
/// Chunks in flight per direction of an in-memory stream.
const STREAM_CHUNKS: usize = 16;

/// The relay's side of an in-memory tunnel: opens streams the [`Acceptor`] takes.
#[derive(Clone)]
pub struct Tunnel {
    streams: mpsc::Sender<(MemSend, MemRecv)>,
    closed: Arc<tokio::sync::watch::Sender<Option<(u32, String)>>>,
    remote: std::net::SocketAddr,
}

/// The agent's side of an in-memory tunnel.
pub struct Acceptor {
    streams: mpsc::Receiver<(MemSend, MemRecv)>,
    closed: tokio::sync::watch::Receiver<Option<(u32, String)>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("memory::Tunnel").field("remote", &self.remote).finish()
    }
}

/// An in-memory tunnel whose agent side seems to come from `remote`.
pub fn tunnel(remote: std::net::SocketAddr) -> (Tunnel, Acceptor) {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(None);
    (
        Tunnel {
            streams: tx,
            closed: Arc::new(closed_tx),
            remote,
        },
        Acceptor {
            streams: rx,
            closed: closed_rx,
        },
    )
}

impl Tunnel {
    /// Opens a stream; fails once the tunnel is closed or its acceptor is gone.
    pub async fn open(&self) -> Result<(MemSend, MemRecv), StreamError> {
        if let Some((code, reason)) = self.closed.borrow().clone() {
            return Err(StreamError::Closed(format!("closed with code {code}: {reason}")));
        }
        let (ours, theirs) = bidi(STREAM_CHUNKS);
        self.streams
            .send(theirs)
            .await
            .map_err(|_| StreamError::Closed("the agent side is gone".into()))?;
        Ok(ours)
    }

    /// Closes the tunnel: no new stream opens, and the acceptor sees the end (streams already
    /// open go on, unlike QUIC's, which a close cuts).
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.closed
            .send_replace(Some((code, String::from_utf8_lossy(reason).into_owned())));
    }

    /// Where the agent side seems to be.
    pub fn remote_address(&self) -> std::net::SocketAddr {
        self.remote
    }
}

impl Acceptor {
    /// The next stream the relay side opened, or the close code and reason once it closed.
    pub async fn accept(&mut self) -> Result<(MemSend, MemRecv), (u32, String)> {
        loop {
            if let Some(closed) = self.closed.borrow_and_update().clone() {
                return Err(closed);
            }
            // A close followed at once by the relay side's drop makes both branches ready: the
            // close, if there was one, is what the agent is told either way.
            let gone = |closed: &tokio::sync::watch::Receiver<Option<(u32, String)>>| {
                closed
                    .borrow()
                    .clone()
                    .unwrap_or((0, "the relay side is gone".to_owned()))
            };
            tokio::select! {
                stream = self.streams.recv() => {
                    return stream.ok_or_else(|| gone(&self.closed));
                }
                changed = self.closed.changed() => {
                    if changed.is_err() {
                        return Err(gone(&self.closed));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{next_chunk, write_chunk};

    #[tokio::test]
    async fn a_tunnel_opens_streams_until_it_is_closed() {
        let (tunnel, mut acceptor) = tunnel(([127, 0, 0, 1], 9).into());
        let (mut send, _recv) = tunnel.open().await.unwrap();
        write_chunk(&mut send, Bytes::from_static(b"hi")).await.unwrap();
        let (_their_send, mut their_recv) = acceptor.accept().await.unwrap();
        assert_eq!(next_chunk(&mut their_recv).await.unwrap().unwrap(), "hi");
        tunnel.close(5, b"revoked");
        assert_eq!(acceptor.accept().await.err(), Some((5, "revoked".to_owned())));
        assert!(matches!(tunnel.open().await, Err(StreamError::Closed(_))));
    }

    #[tokio::test]
    async fn a_reset_on_a_full_queue_is_still_a_reset() {
        let (mut send, mut recv) = stream(1);
        write_chunk(&mut send, Bytes::from_static(b"x")).await.unwrap();
        send.cut(2);
        assert_eq!(next_chunk(&mut recv).await.unwrap().unwrap(), "x");
        assert_eq!(next_chunk(&mut recv).await, Err(StreamError::Reset(2)));
    }

    #[tokio::test]
    async fn a_stopped_reader_shows_its_code_to_the_sender() {
        let (mut send, mut recv) = stream(1);
        recv.stop_reading(7);
        assert_eq!(
            write_chunk(&mut send, Bytes::from_static(b"x")).await,
            Err(StreamError::Stopped(7))
        );
    }
}
