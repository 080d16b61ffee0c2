//! HTTP/2 over TLS over TCP as a tunnel, for networks that let only TCP out (often through an
//! HTTPS proxy).
//!
//! The agent dials the relay's caller port with ALPN `hawser/1`, says its hello and reads the
//! answer as raw frames ([`crate::proto`]); then the connection speaks HTTP/2 with the relay as the
//! client, as cloudflared's http2 mode does. The relay opens one HTTP/2 stream per exchange (a
//! `POST` the agent answers at once with an empty `200`) and the exchange's framing
//! ([`crate::wire`]) rides its DATA frames both ways, chunk for chunk. HTTP/2 gives each stream its
//! own flow-control window, so a reader that stalls holds up only its own stream.
//!
//! The relay's first stream is the control stream. It carries a [`Closing`] frame when the relay
//! closes the tunnel, since only an HTTP/2 server can put a reason into GOAWAY; the agent ends its
//! side of it to retire the tunnel (it moved to another: the relay routes nothing more here, and
//! the tunnel ends with the last exchange it carries). Both sides ping
//! every `keep_alive_secs` and give up on a peer that has not answered within `idle_timeout_secs`
//! of its last answer. HTTP/2 reserves the low reset codes, so the framing's codes
//! ([`crate::wire::reset`]) travel as [`CODE_BASE`] plus the code.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::{RecvHalf, SendHalf, StreamError};
use crate::config::TunnelConfig;
use crate::proto::{self, Closing, Notice};

/// What a framing reset code is offset by on HTTP/2.
pub const CODE_BASE: u32 = 0x100;

/// The path of the control stream and of exchange streams.
const CONTROL_PATH: &str = "/hawser/control";
const STREAM_PATH: &str = "/hawser/stream";

/// How long a closing relay waits for the agent to hang up after telling it why.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// HTTP/2's largest window.
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frames bigger than the 16 KiB default cost fewer headers and wake-ups per byte.
const MAX_FRAME: u32 = 64 * 1024;

/// Bytes one stream may queue for the connection to write before it waits.
const SEND_BUFFER: usize = 1024 * 1024;

/// Reset streams remembered, so that frames still in flight for them are recognised.
const RESET_STREAMS: usize = 1024;

/// HEADERS here are a fixed request line and `:status`; nothing needs more.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// The settings both ends' builders share (h2's client and server builders have no common trait).
macro_rules! tunnel_settings {
    ($builder:expr, $config:expr) => {{
        let (stream_window, connection_window) = windows($config);
        let _ = $builder
            .initial_window_size(stream_window)
            .initial_connection_window_size(connection_window)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_concurrent_reset_streams(RESET_STREAMS)
            // Both ends are authenticated; cancelled exchanges (a caller leaving a watch) are
            // routine and must never add up to a GOAWAY for the whole tunnel (hyperium/h2#856).
            .max_local_error_reset_streams(None);
    }};
}

fn windows(config: &TunnelConfig) -> (u32, u32) {
    let connection = config
        .connection_receive_window
        .map_or(MAX_WINDOW, |w| u32::try_from(w).unwrap_or(MAX_WINDOW).min(MAX_WINDOW));
    (config.stream_receive_window.min(MAX_WINDOW), connection)
}

fn send_error(e: h2::Error) -> StreamError {
    match code_of(&e) {
        Some(code) => StreamError::Stopped(code),
        None => StreamError::Closed(e.to_string()),
    }
}

fn recv_error(e: h2::Error) -> StreamError {
    match code_of(&e) {
        Some(code) => StreamError::Reset(code),
        None => StreamError::Closed(e.to_string()),
    }
}

/// The framing code of a reset the peer sent: its own codes, or a cancel (a dropped stream, as a
/// dropped quinn stream stops with code 0).
fn code_of(e: &h2::Error) -> Option<u64> {
    if !(e.is_reset() && e.is_remote()) {
        return None;
    }
    let reason = u32::from(e.reason()?);
    match reason.checked_sub(CODE_BASE) {
        Some(code) => Some(u64::from(code)),
        None if reason == u32::from(Reason::CANCEL) || reason == u32::from(Reason::NO_ERROR) => Some(0),
        None => None,
    }
}

/// The sending half of an HTTP/2 stream. Shared with its receiving half, which resets the stream
/// to stop reading (HTTP/2 has no STOP_SENDING).
pub struct H2Send {
    stream: Arc<Mutex<h2::SendStream<Bytes>>>,
}

/// The receiving half of an HTTP/2 stream.
pub struct H2Recv {
    /// The relay's stream until the agent's `200` arrives.
    response: Option<h2::client::ResponseFuture>,
    body: Option<h2::RecvStream>,
    stream: Arc<Mutex<h2::SendStream<Bytes>>>,
}

fn lock(stream: &Mutex<h2::SendStream<Bytes>>) -> MutexGuard<'_, h2::SendStream<Bytes>> {
    stream.lock().unwrap_or_else(|e| e.into_inner())
}

fn pair(
    send: h2::SendStream<Bytes>,
    response: Option<h2::client::ResponseFuture>,
    body: Option<h2::RecvStream>,
) -> (H2Send, H2Recv) {
    let stream = Arc::new(Mutex::new(send));
    (H2Send { stream: stream.clone() }, H2Recv { response, body, stream })
}

impl SendHalf for H2Send {
    async fn send_chunks<'a>(&'a mut self, chunks: &'a mut [Bytes]) -> Result<(), StreamError> {
        for chunk in chunks.iter_mut() {
            let mut chunk = std::mem::take(chunk);
            while !chunk.is_empty() {
                lock(&self.stream).reserve_capacity(chunk.len());
                let granted = std::future::poll_fn(|cx| lock(&self.stream).poll_capacity(cx)).await;
                let granted = match granted {
                    Some(Ok(n)) => n.min(chunk.len()),
                    Some(Err(e)) => return Err(send_error(e)),
                    None => return Err(self.gone()),
                };
                if granted > 0 {
                    lock(&self.stream)
                        .send_data(chunk.split_to(granted), false)
                        .map_err(send_error)?;
                }
            }
        }
        Ok(())
    }

    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        // HTTP/2 keeps one waker per stream for the sending side, shared with `poll_capacity`:
        // the framing polls this and sends from the same task, so neither wake-up is lost.
        let stream = self.stream.clone();
        async move {
            let _ = std::future::poll_fn(|cx| lock(&stream).poll_reset(cx)).await;
        }
    }

    fn end(&mut self) {
        let _ = lock(&self.stream).send_data(Bytes::new(), true);
    }

    fn cut(&mut self, code: u32) {
        lock(&self.stream).send_reset(Reason::from(CODE_BASE.saturating_add(code)));
    }
}

impl H2Send {
    /// Why a stream that takes no more data stopped: its reset, if the peer sent one. (Polled with
    /// a waker that wakes nothing: the stream is over, nobody waits on it after this.)
    fn gone(&self) -> StreamError {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match lock(&self.stream).poll_reset(&mut cx) {
            Poll::Ready(Ok(reason)) => StreamError::Stopped(u64::from(u32::from(reason).saturating_sub(CODE_BASE))),
            Poll::Ready(Err(e)) => send_error(e),
            Poll::Pending => StreamError::Closed("the stream was finished".into()),
        }
    }
}

impl RecvHalf for H2Recv {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        if let Some(response) = self.response.as_mut() {
            let response = std::task::ready!(std::pin::Pin::new(response).poll(cx));
            self.response = None;
            match response {
                Ok(resp) if resp.status() == http::StatusCode::OK => self.body = Some(resp.into_body()),
                Ok(resp) => {
                    return Poll::Ready(Err(StreamError::Closed(format!(
                        "the agent answered the stream with {}",
                        resp.status()
                    ))));
                }
                Err(e) => return Poll::Ready(Err(recv_error(e))),
            }
        }
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        loop {
            return match std::task::ready!(body.poll_data(cx)) {
                // An empty frame (an end of stream on its own) is no chunk.
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    // The window opens as chunks are taken, not as they arrive: a reader that
                    // stops taking stops its sender, and no other stream.
                    let _ = body.flow_control().release_capacity(data.len());
                    Poll::Ready(Ok(Some(data)))
                }
                Some(Err(e)) => Poll::Ready(Err(recv_error(e))),
                None => {
                    self.body = None;
                    Poll::Ready(Ok(None))
                }
            };
        }
    }

    fn stop_reading(&mut self, code: u32) {
        self.body = None;
        self.response = None;
        lock(&self.stream).send_reset(Reason::from(CODE_BASE.saturating_add(code)));
    }
}

fn stream_request(path: &'static str) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static(match path {
        CONTROL_PATH => "https://hawser/hawser/control",
        _ => "https://hawser/hawser/stream",
    });
    req
}

/// The relay's side of an HTTP/2 tunnel: opens streams, and closes the tunnel with a reason.
#[derive(Clone)]
pub struct H2Tunnel {
    inner: Arc<TunnelInner>,
}

struct TunnelInner {
    /// One handle for every open, so that each waits for the one before it to be opened: at
    /// the agent's stream limit an open waits (and times out) instead of queueing without bound.
    requests: tokio::sync::Mutex<h2::client::SendRequest<Bytes>>,
    close: watch::Sender<Option<Closing>>,
    /// The latest notice for the agent, written on the control stream as it is set.
    notice: watch::Sender<Option<Notice>>,
    /// Turns true once the agent said it retires this tunnel (it moved to another).
    retiring: watch::Sender<bool>,
    remote: SocketAddr,
}

impl std::fmt::Debug for H2Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Tunnel").field("remote", &self.inner.remote).finish()
    }
}

impl H2Tunnel {
    /// Opens a stream; waits while the agent's stream limit is reached.
    pub async fn open(&self) -> Result<(H2Send, H2Recv), StreamError> {
        if *self.inner.retiring.borrow() {
            return Err(StreamError::Closed("the agent retired this tunnel".into()));
        }
        let closed = |e: h2::Error| StreamError::Closed(e.to_string());
        let mut requests = self.inner.requests.lock().await;
        std::future::poll_fn(|cx| requests.poll_ready(cx))
            .await
            .map_err(closed)?;
        let (response, send) = requests
            .send_request(stream_request(STREAM_PATH), false)
            .map_err(closed)?;
        // Beyond the limit h2 queues the stream: wait until it is really open, so the caller's
        // open deadline applies here (dropping the halves then withdraws it).
        std::future::poll_fn(|cx| requests.poll_ready(cx))
            .await
            .map_err(closed)?;
        Ok(pair(send, Some(response), None))
    }

    /// Tells the agent why and closes the tunnel.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.inner.close.send_if_modified(|closing| {
            let first = closing.is_none();
            if first {
                *closing = Some(Closing {
                    code,
                    reason: String::from_utf8_lossy(reason).into_owned(),
                });
            }
            first
        });
    }

    /// Tells the agent `notice` on the control stream (the tunnel stays up).
    pub fn notify(&self, notice: Notice) {
        self.inner.notice.send_replace(Some(notice));
    }

    /// Resolves once the agent said it retires this tunnel: it takes no new streams, and ends
    /// when those it carries are done.
    pub async fn retired(&self) {
        let mut retiring = self.inner.retiring.subscribe();
        if retiring.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The agent's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote
    }
}

/// Starts the relay's side of an HTTP/2 tunnel over `io` (after the welcome was written): the
/// tunnel to register, and the future that runs the connection and resolves with why it ended.
pub async fn relay_side<T>(
    io: T,
    remote: SocketAddr,
    config: &TunnelConfig,
) -> Result<(H2Tunnel, impl Future<Output = String> + Send + use<T>), StreamError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: h2::Error| StreamError::Closed(e.to_string());
    let mut builder = h2::client::Builder::new();
    tunnel_settings!(builder.enable_push(false), config);
    let (requests, mut connection) = builder.handshake::<_, Bytes>(io).await.map_err(failed)?;
    let ping = connection.ping_pong();
    // The control stream first, on the handle every open uses after it.
    let mut requests = requests.ready().await.map_err(failed)?;
    let (control_response, mut control) = requests
        .send_request(stream_request(CONTROL_PATH), false)
        .map_err(failed)?;
    let (close, mut closing) = watch::channel(None);
    let (notice, mut notices) = watch::channel(None);
    let (retiring, _) = watch::channel(false);
    let tunnel = H2Tunnel {
        inner: Arc::new(TunnelInner {
            requests: tokio::sync::Mutex::new(requests),
            close,
            notice,
            retiring,
            remote,
        }),
    };
    let (keep_alive, idle) = liveness(config);
    let inner = tunnel.inner.clone();
    let run = async move {
        let dead = dead_peer(ping, keep_alive, idle);
        let mut dead = std::pin::pin!(dead);
        let agent_retires = agent_retires(control_response);
        let mut agent_retires = std::pin::pin!(agent_retires);
        let mut retired = false;
        let told = loop {
            tokio::select! {
                ended = &mut connection => {
                    return ended.map_or_else(|e| e.to_string(), |()| "the agent hung up".into());
                }
                () = &mut dead => return "the agent stopped answering pings".into(),
                // The sender lives in `inner`, which this holds: an error cannot happen.
                told = closing.wait_for(Option::is_some) => break told.map(|t| t.clone()).unwrap_or(None),
                // The sender lives in `inner` too.
                Ok(()) = notices.changed(), if !retired => {
                    let notice = notices.borrow_and_update().clone();
                    if let Some(frame) = notice.and_then(|n| proto::frame_bytes(&n).ok()) {
                        let _ = control.send_data(frame, false);
                    }
                }
                () = &mut agent_retires, if !retired => {
                    retired = true;
                    inner.retiring.send_replace(true);
                    // Ending our side closes the control stream, so the agent's graceful
                    // shutdown can finish once the exchanges in flight are done.
                    let _ = control.send_data(Bytes::new(), true);
                }
            }
        };
        let Some(told) = told else {
            return "closed".into();
        };
        if let Ok(frame) = proto::frame_bytes(&told) {
            let _ = control.send_data(frame, true);
        }
        // The agent hangs up once it has read why; give the frame that long to leave.
        let _ = tokio::time::timeout(CLOSE_LINGER, &mut connection).await;
        format!("closed ({}): {}", told.code, told.reason)
    };
    Ok((tunnel, run))
}

/// Resolves when the agent ends its side of the control stream: it retires the tunnel.
async fn agent_retires(response: h2::client::ResponseFuture) {
    let Ok(response) = response.await else {
        return std::future::pending().await;
    };
    let mut body = response.into_body();
    loop {
        match body.data().await {
            Some(Ok(data)) => {
                let _ = body.flow_control().release_capacity(data.len());
            }
            Some(Err(_)) => return std::future::pending().await,
            None => return,
        }
    }
}

/// Keep-alive interval and how long an unanswered ping is waited for.
fn liveness(config: &TunnelConfig) -> (Duration, Duration) {
    let keep_alive = Duration::from_secs(config.keep_alive_secs.max(1));
    let idle = Duration::from_secs(config.idle_timeout_secs.saturating_sub(config.keep_alive_secs).max(1));
    (keep_alive, idle)
}

/// Resolves once a ping went unanswered: a ping `keep_alive` after the last answer, given `wait`
/// to come back, finds a dead peer within `keep_alive + wait` (the idle timeout) of its last pong.
async fn dead_peer(ping: Option<h2::PingPong>, keep_alive: Duration, wait: Duration) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(keep_alive).await;
        match tokio::time::timeout(wait, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

mod agent;
pub use agent::{AgentSide, agent_side};

#[cfg(test)]
mod tests;
