//! The agent's side of an HTTP/2 tunnel: it accepts the relay's streams, reads the control
//! stream, answers pings, and retires the tunnel when asked.

use bytes::{Bytes, BytesMut};
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{CONTROL_PATH, H2Recv, H2Send, dead_peer, liveness, pair, windows};
use super::{MAX_FRAME, MAX_HEADER_LIST, RESET_STREAMS, SEND_BUFFER};
use crate::config::TunnelConfig;
use crate::proto::{self, Closing, Control, Notice};
use crate::transport::StreamError;

/// The agent's side of an HTTP/2 tunnel, once the welcome was read.
pub struct AgentSide<T> {
    connection: h2::server::Connection<T, Bytes>,
    config: TunnelConfig,
}

/// Starts the agent's side over `io`.
pub async fn agent_side<T>(io: T, config: &TunnelConfig) -> Result<AgentSide<T>, StreamError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut builder = h2::server::Builder::new();
    tunnel_settings!(builder.max_concurrent_streams(config.max_streams_per_tunnel), config);
    let connection = builder
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| StreamError::Closed(e.to_string()))?;
    Ok(AgentSide {
        connection,
        config: config.clone(),
    })
}

impl<T: AsyncRead + AsyncWrite + Unpin> AgentSide<T> {
    /// Hands each exchange stream to `serve` until the tunnel ends, and says why it ended. Once
    /// `retire` is cancelled the relay may open no more streams (GOAWAY) and the tunnel ends when
    /// those it carries are done; once `stop` is, it ends at once. `moving` is cancelled when the
    /// relay asks the agent to move (the tunnel goes on until retired).
    pub async fn serve(
        mut self,
        mut serve: impl FnMut(H2Send, H2Recv),
        retire: CancellationToken,
        stop: CancellationToken,
        moving: CancellationToken,
    ) -> String {
        let ping = self.connection.ping_pong();
        let (keep_alive, idle) = liveness(&self.config);
        let dead = dead_peer(ping, keep_alive, idle);
        let mut dead = std::pin::pin!(dead);
        let mut control: Option<(h2::RecvStream, h2::SendStream<Bytes>)> = None;
        let mut told = BytesMut::new();
        let mut retiring = false;
        loop {
            let accepted = tokio::select! {
                accepted = self.connection.accept() => accepted,
                () = &mut dead => return "the relay stopped answering pings".into(),
                () = stop.cancelled() => return "the agent is shutting down".into(),
                () = retire.cancelled(), if !retiring => {
                    retiring = true;
                    self.connection.graceful_shutdown();
                    // Ending our side of the control stream tells the relay to route no more
                    // here; it ends its side in turn, and the streams in flight end by themselves.
                    if let Some((_, mut send)) = control.take() {
                        let _ = send.send_data(Bytes::new(), true);
                    }
                    continue;
                }
                why = read_control(&mut control, &mut told, &moving), if control.is_some() => return why,
            };
            let (req, mut respond) = match accepted {
                Some(Ok(pair)) => pair,
                Some(Err(e)) => return e.to_string(),
                None if retiring => return "retired: its streams are done".into(),
                None => return "the relay hung up".into(),
            };
            let is_control = req.uri().path() == CONTROL_PATH;
            let Ok(send) = respond.send_response(http::Response::new(()), false) else {
                continue;
            };
            if is_control && control.is_none() && !retiring {
                control = Some((req.into_body(), send));
                continue;
            }
            if is_control {
                // A second control stream is a broken relay: refuse that stream alone.
                let mut send = send;
                send.send_reset(Reason::PROTOCOL_ERROR);
                continue;
            }
            let (send, recv) = pair(send, None, Some(req.into_body()));
            serve(send, recv);
        }
    }
}

/// Reads the control stream until the relay says why it closes (or the stream ends); a move
/// notice on the way cancels `moving`.
async fn read_control(
    control: &mut Option<(h2::RecvStream, h2::SendStream<Bytes>)>,
    told: &mut BytesMut,
    moving: &CancellationToken,
) -> String {
    let Some((stream, _)) = control.as_mut() else {
        return std::future::pending().await;
    };
    let mut closing: Option<Closing> = None;
    loop {
        match stream.data().await {
            Some(Ok(data)) => {
                let _ = stream.flow_control().release_capacity(data.len());
                if told.len() + data.len() > proto::MAX_FRAME + 16 {
                    return "the relay's control stream overflowed".into();
                }
                told.extend_from_slice(&data);
                loop {
                    match proto::decode_frame::<Control>(told) {
                        Ok(Some((frame, used))) => {
                            let _ = told.split_to(used);
                            match frame {
                                Control::Notice(Notice::Move { .. }) => moving.cancel(),
                                Control::Closing(c) => closing = Some(c),
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return format!("the relay's control stream: {e}"),
                    }
                }
            }
            Some(Err(e)) => return format!("control stream: {e}"),
            None => break,
        }
    }
    *control = None;
    match closing {
        Some(closing) => format!("the relay closed the tunnel ({}): {}", closing.code, closing.reason),
        None => "the relay ended the control stream".into(),
    }
}
