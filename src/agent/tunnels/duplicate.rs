//! A tunnel welcomed by a relay that another of the agent's tunnels holds already (two tunnels
//! dialled at once, or one whose view of the other was stale, can land on one relay through a
//! balancer). The relay registered it before its welcome told the agent which relay it is, so
//! requests may already be on their way over it: closing it at once reset them before their
//! response head (a forwarded GET failed so in CI). It is retired instead, as a moved tunnel
//! is: the relay routes nothing new to it, what it carries is served, and then it closes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug};

use super::super::{AgentState, link, serve};
use crate::proto;

/// How long a retired duplicate QUIC tunnel stays open with nothing in flight before the agent
/// closes it. QUIC has no GOAWAY: a stream the relay opened just before it read the notice may
/// still arrive (one the relay forwards for a peer starts a peer round trip later).
const QUIET_BEFORE_CLOSE: Duration = Duration::from_secs(2);

/// Retires `link`, a duplicate that `relay` welcomed; the task serving it until it ends is owned
/// by the agent's tasks.
pub(super) fn retire(link: link::Link, state: &Arc<AgentState>, relay: Arc<str>) {
    match link {
        link::Link::Quic(connection, control) => {
            state
                .tasks
                .spawn(quic(connection, control, state.clone(), relay).in_current_span());
        }
        link::Link::Tcp(side) => {
            // HTTP/2 ends it exactly: the retire is a GOAWAY, streams the relay opened are served
            // and the connection ends with the last of them.
            let retire = CancellationToken::new();
            retire.cancel();
            let (stop, serving) = (state.stop.clone(), state.clone());
            state.tasks.spawn(
                async move {
                    let why = side
                        .serve(
                            move |send, recv| {
                                serving
                                    .tasks
                                    .spawn(serve::stream(send, recv, serving.clone(), relay.clone()).in_current_span());
                            },
                            retire,
                            stop,
                            CancellationToken::new(),
                        )
                        .await;
                    debug!(reason = %why, "the duplicate tunnel ended");
                }
                .in_current_span(),
            );
        }
    }
}

/// Tells the relay the QUIC tunnel retires, serves what arrives meanwhile, and closes the
/// connection once nothing has been in flight for [`QUIET_BEFORE_CLOSE`] (or at shutdown).
async fn quic(connection: quinn::Connection, control: crate::tunnel::Stream, state: Arc<AgentState>, relay: Arc<str>) {
    let (_recv, mut send) = control.into_inner();
    if let Err(e) = proto::write_frame(&mut send, &proto::AgentNotice::Retire).await {
        debug!(error = %e, "could not retire the duplicate tunnel; closing it");
    } else {
        let served = TaskTracker::new();
        loop {
            let quiet = async {
                served.close();
                served.wait().await;
                tokio::time::sleep(QUIET_BEFORE_CLOSE).await;
            };
            tokio::select! {
                accepted = connection.accept_bi() => match accepted {
                    Ok((send, recv)) => {
                        served.reopen();
                        let stream = serve::stream(send, recv, state.clone(), relay.clone());
                        served.spawn(state.tasks.track_future(stream).in_current_span());
                    }
                    Err(_) => return,
                },
                () = quiet => break,
                () = state.stop.cancelled() => break,
            }
        }
        debug!("the duplicate tunnel is idle; closing it");
    }
    connection.close(0u32.into(), b"a duplicate tunnel, retired");
}
