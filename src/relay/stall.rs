//! Closes caller connections whose responses the caller does not take.
//!
//! Threat: a caller that stops reading holds a connection, and every request on it, for as long as
//! it likes. Over HTTP/2 it leaves its stream windows at 0; over HTTP/1.1 (or HTTP/2) it leaves its
//! TCP window at 0. The responses cannot be delivered, so their requests stay in flight and
//! [`crate::idle::Activity`] never closes the connection; unauthenticated requests (401, 429) are
//! enough.
//!
//! Design: each response body is *waiting on the caller* from the moment it is handed to hyper
//! until hyper polls it, and again from each moment a poll returns a frame until hyper polls it
//! again: hyper stops polling a body while the stream's window (HTTP/2) or its write buffer
//! (HTTP/1.1) takes nothing more. It is not waiting on the caller while its last poll was `Pending`
//! (it waits on the upstream: a slow apiserver, a quiet watch), nor once it ended or was dropped.
//! The socket is waiting on the caller from a write the kernel refused (its send buffer is full)
//! until one it takes: HTTP/1.1 finishes a small response into its own buffer and then reads no
//! further request until that buffer is flushed, so only the socket shows that stall. When a
//! response, or the socket, has waited on the caller longer than the bound, the connection is
//! abandoned.
//!
//! The one exemption is a stream the caller was authorised to open and may read at its own pace
//! ([`Delivery::Unbounded`]: an admitted watch, follow or upgrade). Its body is never counted. An
//! HTTP/1.1 connection carries one response at a time, so while it carries such a stream its socket
//! is not counted either. HTTP/2 multiplexes: a caller leaves a stream unread with that stream's
//! window, and a socket that takes nothing is a caller that reads nothing at all (hyper's pings end
//! a silent one anyway), so it is counted whatever streams it carries; otherwise one open watch would
//! let a caller park every other answer in hyper's send buffers. Such a stream still counts against
//! `max_streams_per_caller`, and TCP keep-alive or HTTP/2 pings end it if the caller vanishes.
//!
//! Cost: per body frame two relaxed atomic stores and a clock read; per socket write an atomic load;
//! the registry is locked once per response and scanned once per wake of [`Stalls::stalled`], which
//! needs no wake-ups from the hot path (see there).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What a connection's responses and socket wait on.
#[derive(Debug)]
pub struct Stalls {
    epoch: Instant,
    /// One slot per live response body; a slot whose body is gone is swept when the list is full.
    watches: Mutex<Vec<Arc<Slot>>>,
    /// Since when the socket has refused writes, or [`NOT_WAITING`].
    socket: AtomicU64,
}

/// A response body's state: [`NOT_WAITING`], [`UNBOUNDED`], [`UNBOUNDED_OWNS_SOCKET`], or since
/// when it has waited on the caller (nanoseconds after the epoch, plus one).
#[derive(Debug)]
struct Slot(AtomicU64);

const NOT_WAITING: u64 = 0;
/// An unbounded HTTP/2 stream: never counted, the socket still is.
const UNBOUNDED: u64 = u64::MAX - 1;
/// An unbounded HTTP/1.x response: it is the only thing its socket carries, so neither is counted.
const UNBOUNDED_OWNS_SOCKET: u64 = u64::MAX;

/// Whether a response must reach the caller within the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Abandoned, with its connection, once it has waited on the caller for the bound.
    Bounded,
    /// The caller's own stream, read at the caller's pace: never abandoned for waiting.
    Unbounded,
}

/// What kind of exchange a forwarded request is, as far as reading its answer at the caller's pace
/// goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// A watch or a followed log, as the apiserver resolves the request: it streams the answer.
    Stream,
    /// An upgrade (exec, attach, port-forward): spliced bytes once the cluster switched protocols.
    Upgrade,
    /// Anything else, including a request that only looks long-running (`?follow=1` on a list).
    Plain,
}

impl Delivery {
    /// A response the cluster gave an authenticated, admitted caller: unbounded only for what the
    /// apiserver really streams — a watch or followed log it accepted (2xx) with no
    /// `Content-Length`, or an upgrade it switched (101). Anything a caller can merely dress up as
    /// long-running (a `follow` query on a list, a name `watch`, `Upgrade` headers on a plain GET)
    /// stays bounded.
    pub fn of_forwarded(exchange: Exchange, status: StatusCode, has_length: bool) -> Self {
        let unbounded = match exchange {
            Exchange::Stream => status.is_success() && !has_length,
            Exchange::Upgrade => status == StatusCode::SWITCHING_PROTOCOLS,
            Exchange::Plain => false,
        };
        if unbounded { Self::Unbounded } else { Self::Bounded }
    }
}

/// Why [`Stalls::stalled`] completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// How long the longest wait on the caller had lasted.
    pub waited: Duration,
    /// Response bodies waiting on the caller.
    pub waiting: usize,
    /// Response bodies live.
    pub watched: usize,
    /// Whether the socket was waiting on the caller (and counted).
    pub socket: bool,
}

impl Stalls {
    /// A connection with nothing watched yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            watches: Mutex::new(Vec::new()),
            socket: AtomicU64::new(NOT_WAITING),
        })
    }

    /// Wraps the connection's transport (under TLS, so a write is bytes the kernel took).
    pub fn socket<T>(self: &Arc<Self>, io: T) -> Socket<T> {
        Socket {
            io,
            stalls: self.clone(),
        }
    }

    /// Watches a response body handed to hyper for a request of `version`; a bounded one waits on
    /// the caller from now.
    pub fn watch<B>(&self, body: B, delivery: Delivery, version: Version) -> Watched<B> {
        let state = match delivery {
            Delivery::Bounded => stamp(self.epoch),
            Delivery::Unbounded if version < Version::HTTP_2 => UNBOUNDED_OWNS_SOCKET,
            Delivery::Unbounded => UNBOUNDED,
        };
        let slot = Arc::new(Slot(AtomicU64::new(state)));
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        // Sweeping only when full keeps registration amortised O(1) and the list at most twice the
        // bodies live (bounded by the connection's concurrent streams).
        if watches.len() == watches.capacity() {
            watches.retain(|slot| Arc::strong_count(slot) > 1);
        }
        watches.push(slot.clone());
        Watched {
            inner: body,
            slot: Some(slot),
            bounded: delivery == Delivery::Bounded,
            epoch: self.epoch,
        }
    }

    /// Completes once a response or the socket has waited on the caller for `bound`; never while
    /// nothing has. It needs no wake-up from the watches: it looks at least every `bound`, and a
    /// wait that starts after one look cannot reach the bound before the next.
    pub async fn stalled(&self, bound: Duration) -> Stall {
        loop {
            // Read before the scan, so a wait that starts during it is seen by the next look in time.
            let now = Instant::now();
            let (oldest, stall) = self.scan();
            let next = match oldest {
                Some(since) if since + bound <= now => {
                    return Stall {
                        waited: now - since,
                        ..stall
                    };
                }
                Some(since) => since + bound,
                None => now + bound,
            };
            tokio::time::sleep_until(next).await;
        }
    }

    /// Since when the oldest wait on the caller has lasted, and the counts.
    fn scan(&self) -> (Option<Instant>, Stall) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches.retain(|slot| Arc::strong_count(slot) > 1);
        let (mut oldest, mut waiting, mut owned) = (u64::MAX, 0, false);
        for slot in watches.iter() {
            match slot.0.load(Ordering::Relaxed) {
                NOT_WAITING | UNBOUNDED => {}
                UNBOUNDED_OWNS_SOCKET => owned = true,
                since => {
                    waiting += 1;
                    oldest = oldest.min(since);
                }
            }
        }
        let blocked = self.socket.load(Ordering::Relaxed);
        // An HTTP/1.1 caller may leave its own watch unread, and the socket fills with it.
        let socket = blocked != NOT_WAITING && !owned;
        if socket {
            oldest = oldest.min(blocked);
        }
        let oldest = (oldest != u64::MAX).then(|| self.epoch + Duration::from_nanos(oldest - 1));
        let counts = Stall {
            waited: Duration::ZERO,
            waiting,
            watched: watches.len(),
            socket,
        };
        (oldest, counts)
    }
}

/// Now as a waiting state: never one of the named states.
fn stamp(epoch: Instant) -> u64 {
    let nanos = Instant::now().saturating_duration_since(epoch).as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX).min(UNBOUNDED - 2) + 1
}

/// A response body whose waits on the caller are watched.
#[derive(Debug)]
pub struct Watched<B> {
    inner: B,
    /// Dropped once the body is done, so a finished body hyper still holds never counts.
    slot: Option<Arc<Slot>>,
    bounded: bool,
    epoch: Instant,
}

impl<B: Body + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let slot = this.slot.as_ref().filter(|_| this.bounded);
        if let Some(slot) = slot {
            slot.0.store(NOT_WAITING, Ordering::Relaxed);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                if let Some(slot) = slot {
                    slot.0.store(stamp(this.epoch), Ordering::Relaxed);
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.slot = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A caller connection's transport, whose refused writes are watched.
#[derive(Debug)]
pub struct Socket<T> {
    io: T,
    stalls: Arc<Stalls>,
}

impl<T> Socket<T> {
    /// Records a write's outcome: refused starts a wait (unless one is on), taken ends it.
    fn wrote<R>(&self, polled: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        let state = &self.stalls.socket;
        match &polled {
            Poll::Pending if state.load(Ordering::Relaxed) == NOT_WAITING => {
                state.store(stamp(self.stalls.epoch), Ordering::Relaxed);
            }
            Poll::Ready(Ok(_)) if state.load(Ordering::Relaxed) != NOT_WAITING => {
                state.store(NOT_WAITING, Ordering::Relaxed);
            }
            _ => {}
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Socket<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Socket<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
