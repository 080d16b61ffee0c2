//! Agents over TCP: the caller port's TLS door hands them here ([`super::super::door`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

use super::{HELLO_TIMEOUT, NoHello, RETIRED, Sessions, close_code, hold, judge, no_hello, read_hello, stopped};
use crate::proto::{self, Closing, Welcome};
use crate::transport::Tunnel;

/// An agent that dialed the caller port over TCP (ALPN `hawser/1`), past its TLS handshake: the
/// same hello, judgement, budgets and registry as on QUIC, then HTTP/2 with the relay as the
/// client ([`crate::transport::h2`]). A refusal is a [`Closing`] frame in place of the welcome.
/// `unproven` (a handshake permit and the source's unproven slot, taken at the door) is held
/// until the hello is judged.
pub async fn tcp_session<T>(
    mut io: T,
    remote: SocketAddr,
    sessions: Arc<Sessions>,
    unproven: impl Send,
    mut stopping: watch::Receiver<bool>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut io))
        .await
        .unwrap_or(Err(NoHello::Late));
    let judged = match hello {
        Ok(hello) => judge(&hello, remote.ip(), &sessions)
            .map(|admitted| (hello, admitted))
            .map_err(|(code, reason)| Closing { code, reason }),
        Err(why) => {
            let (code, reason) = no_hello(why, remote, &sessions);
            Err(Closing { code, reason })
        }
    };
    drop(unproven);
    let (hello, admitted) = match judged {
        Ok(pair) => pair,
        Err(closing) => {
            let answer = proto::Answer::Closing(closing);
            let _ = tokio::time::timeout(HELLO_TIMEOUT, async {
                let _ = proto::write_frame(&mut io, &answer).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
            })
            .await;
            return;
        }
    };
    if hello.probe {
        return super::probe::answer_tcp(&mut io, &hello, remote, &sessions).await;
    }
    let id = sessions.registry.new_id();
    let welcome = proto::Answer::Welcome(Welcome {
        relay: sessions.relay.clone(),
        session: id,
        fleet: sessions.fleet,
    });
    if proto::write_frame(&mut io, &welcome).await.is_err() {
        return;
    }
    let (tunnel, run) = match crate::transport::h2::relay_side(io, remote, &sessions.tunnel).await {
        Ok(pair) => pair,
        Err(e) => return info!(error = %e, "agent tunnel failed to start"),
    };
    let mut run = std::pin::pin!(run);
    let Some(mut held) = hold(hello, admitted, id, remote, Tunnel::H2(tunnel.clone()), &sessions) else {
        let _ = run.await;
        return;
    };
    info!(cluster = %held.hello.cluster, agent = %held.hello.instance, session = id, transport = "tcp", "agent registered");
    let mut retired = false;
    let mut draining = sessions.draining.subscribe();
    let mut told = false;
    let reason = loop {
        tokio::select! {
            reason = &mut run => break reason,
            drains = async { draining.wait_for(|d| *d).await.is_ok() }, if !told && !retired => {
                told = true;
                if drains {
                    tunnel.notify(proto::Notice::Move { reason: "the relay is draining".into() });
                }
            }
            () = stopped(&mut stopping) => {
                tunnel.close(close_code::SHUTDOWN, b"relay shutting down");
                break run.await;
            }
            // The agent moved to another tunnel: route nothing more here; what is in flight ends
            // by itself, and so then does the connection.
            () = tunnel.retired(), if !retired => {
                retired = true;
                held.gone(&RETIRED);
            }
        }
    };
    held.gone(&reason);
}
