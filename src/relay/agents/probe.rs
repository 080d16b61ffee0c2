//! Probes (`hawser doctor`): a hello that asks only whether it would be welcomed. It is read and
//! judged exactly as a hello — the same token check, names, trust model and failure budget, so a
//! probe is no cheaper way to guess tokens — and answered with a welcome of session 0 or the same
//! refusal, but never registered: it cannot replace the session of the agent whose configuration
//! is being checked, and no request is ever routed to it.

use std::net::SocketAddr;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::info;

use super::{HELLO_TIMEOUT, Sessions};
use crate::audit::AgentEvent;
use crate::proto::{self, Hello, Welcome};

/// Answers an admitted probe over QUIC: the welcome, then the prober closes the connection (or
/// the relay does, after [`HELLO_TIMEOUT`]); closing at once could drop the welcome unsent.
pub(super) async fn answer_quic(
    connection: &quinn::Connection,
    control: &mut crate::tunnel::Stream,
    hello: &Hello,
    remote: SocketAddr,
    sessions: &Sessions,
) {
    if answer(control, hello, remote, sessions).await {
        let _ = tokio::time::timeout(HELLO_TIMEOUT, connection.closed()).await;
    }
    connection.close(0u32.into(), b"probe answered");
}

/// Answers an admitted probe over TCP: the welcome, then the end of the connection.
pub(super) async fn answer_tcp<T: AsyncWrite + Unpin>(
    io: &mut T,
    hello: &Hello,
    remote: SocketAddr,
    sessions: &Sessions,
) {
    let _ = tokio::time::timeout(HELLO_TIMEOUT, answer(io, hello, remote, sessions)).await;
}

/// Puts the probe on record and writes its welcome, then ends the sending side; whether the
/// welcome went out.
async fn answer<W: AsyncWrite + Unpin>(io: &mut W, hello: &Hello, remote: SocketAddr, sessions: &Sessions) -> bool {
    info!(cluster = %hello.cluster, agent = %hello.instance, "agent probe welcomed; nothing registered");
    sessions.audit.agent_event(&AgentEvent {
        event: "agent_probed",
        cluster: &hello.cluster,
        agent: &hello.instance,
        session: 0,
        peer: remote.to_string(),
        beside: &[],
        reason: None,
    });
    let welcome = Welcome {
        relay: sessions.relay.clone(),
        session: 0,
        fleet: sessions.fleet,
    };
    // Over TCP the answer is the `Answer` enum, whose welcome reads as the same JSON.
    let sent = proto::write_frame(io, &welcome).await.is_ok();
    let _ = io.shutdown().await;
    sent
}
