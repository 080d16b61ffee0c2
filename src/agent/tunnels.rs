//! The agent's tunnels: each dials the relay (QUIC, TCP or `auto`), says hello, serves the
//! relay's streams until it ends, and dials again with backoff.
//!
//! An agent holds `relay.connections` tunnels (unset: one, or two once a relay says it is one of a
//! fleet), each on a distinct relay: a tunnel welcomed by a relay that another already holds is
//! closed and dialled again, so through a balancer the agent does not rely on round-robin luck.
//! When a relay drains it tells its agents to move: the tunnel is replaced make-before-break (the
//! replacement is welcomed by another relay first, then the old tunnel is retired: the relay
//! routes nothing new to it, and it ends with what it carries).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::backoff::{Backoff, QUICK_REDIALS, quick_redial_wait};
use super::{AgentState, SessionError, link, serve};
use crate::config::{AgentConfig, Transport};
use crate::proto::Notice;
use crate::telemetry::metrics::{self, attribute_values};
use crate::tunnel;

/// Which relay each of the agent's tunnels holds.
#[derive(Default)]
pub(super) struct Slots {
    held: Mutex<Vec<Option<String>>>,
}

impl Slots {
    /// Claims `relay` for tunnel `slot`, unless another tunnel holds it or it is `avoid` (the
    /// relay this tunnel is moving away from).
    fn claim(&self, slot: usize, relay: &str, avoid: Option<&str>) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if avoid == Some(relay)
            || held
                .iter()
                .enumerate()
                .any(|(i, r)| i != slot && r.as_deref() == Some(relay))
        {
            return false;
        }
        if held.len() <= slot {
            held.resize(slot + 1, None);
        }
        held[slot] = Some(relay.to_owned());
        true
    }

    /// The relays the other tunnels hold, and `avoid`: what a hello of tunnel `slot` names.
    fn elsewhere(&self, slot: usize, avoid: Option<&str>) -> Vec<String> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let others = held
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != slot)
            .filter_map(|(_, r)| r.clone());
        others.chain(avoid.map(str::to_owned)).collect()
    }

    fn release(&self, slot: usize) {
        if let Some(held) = self.held.lock().unwrap_or_else(|e| e.into_inner()).get_mut(slot) {
            *held = None;
        }
    }
}

/// How a tunnel ended.
enum Ended {
    /// It closed, for this reason.
    Closed(String),
    /// Its relay asked it to move: it still serves what it carries, and is retired once a
    /// replacement is welcomed elsewhere. `gone` is cancelled when it has ended.
    Moved(Retire, CancellationToken),
}

/// A tunnel being replaced: how to retire it, the relay it leaves, and whether it has ended (its
/// relay is then no longer avoided: a restarted relay of the same name is welcome).
struct Leaving {
    retire: Retire,
    from: String,
    gone: CancellationToken,
}

/// Retires a tunnel: the relay routes nothing new to it; it ends with the exchanges it carries.
enum Retire {
    /// A retire notice on the QUIC control stream (both halves are kept until the connection
    /// ends: the relay's side is neither stopped nor finished early).
    Quic(quinn::SendStream, quinn::RecvStream),
    /// The TCP tunnel's retire token.
    Tcp(CancellationToken),
}

impl Retire {
    /// Retires the tunnel; what waits for its end is owned by `tasks`.
    fn retire(self, tasks: &tokio_util::task::TaskTracker) {
        match self {
            Self::Quic(mut send, recv) => {
                tasks.spawn(async move {
                    if let Err(e) = crate::proto::write_frame(&mut send, &crate::proto::AgentNotice::Retire).await {
                        debug!(error = %e, "could not retire the moved tunnel (it ends with its relay)");
                    }
                    // Kept until the connection ends (the relay closes it once drained).
                    let _keep = recv;
                    let _ = send.stopped().await;
                });
            }
            Self::Tcp(retire) => retire.cancel(),
        }
    }
}

/// What `auto` has learnt of QUIC on this network.
#[derive(Default)]
struct Auto {
    /// QUIC found unreachable: dial TCP, and probe QUIC from there.
    blocked: bool,
    /// A QUIC tunnel came up at least once.
    worked: bool,
    /// QUIC dials in a row that got no handshake.
    timeouts: u32,
}

/// Holds the agent's tunnels until the future is dropped (shutdown).
pub(super) async fn hold(config: &AgentConfig, dialer: &link::Dialer, state: &Arc<AgentState>) {
    let slots = Slots::default();
    let fleet = tokio::sync::watch::Sender::new(false);
    let more = async {
        let wanted = match config.relay.connections {
            Some(n) => usize::from(n),
            None => {
                let mut told = fleet.subscribe();
                if told.wait_for(|f| *f).await.is_err() {
                    return;
                }
                info!("the relay is one of a fleet: holding a second tunnel, to another relay");
                2
            }
        };
        futures_util::future::join_all((1..wanted).map(|slot| keep(slot, config, dialer, state, &slots, &fleet))).await;
    };
    tokio::join!(keep(0, config, dialer, state, &slots, &fleet), more);
}

/// Keeps tunnel number `slot` up: dial, serve, dial again.
async fn keep(
    slot: usize,
    config: &AgentConfig,
    dialer: &link::Dialer,
    state: &Arc<AgentState>,
    slots: &Slots,
    fleet: &tokio::sync::watch::Sender<bool>,
) {
    let mut backoff = Backoff::new(config.reconnect.clone());
    let mut auto = Auto::default();
    let mut moving: Option<Leaving> = None;
    let mut same_relay = 0;
    loop {
        let started = Instant::now();
        let span = info_span!("tunnel", relay = %config.relay.address, cluster = %config.cluster, link = slot);
        let place = Place {
            slot,
            slots,
            fleet,
            moving: &mut moving,
        };
        let ended = session(config, dialer, state, &mut auto, place).instrument(span).await;
        let uptime = started.elapsed();
        let wait = match ended {
            Ok(Ended::Moved(retire, gone)) => {
                // Dial the replacement at once; the old tunnel serves on meanwhile.
                let from = slots
                    .held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(slot)
                    .cloned()
                    .flatten();
                moving = Some(Leaving {
                    retire,
                    from: from.unwrap_or_default(),
                    gone,
                });
                same_relay = 0;
                reconnect(Cause::Moved);
                continue;
            }
            Ok(Ended::Closed(reason)) => {
                slots.release(slot);
                same_relay = 0;
                let wait = backoff.next_wait(uptime, &mut rand::rng());
                info!(%reason, ?uptime, ?wait, "tunnel closed; reconnecting");
                reconnect(Cause::Closed);
                wait
            }
            Err(e) if e.elsewhere() && same_relay < QUICK_REDIALS => {
                same_relay += 1;
                let wait = quick_redial_wait(&mut rand::rng());
                debug!(error = %e, ?wait, "refused by a relay that is draining or holds another tunnel; dialling again");
                reconnect(Cause::RelayElsewhere);
                wait
            }
            Err(e) => {
                same_relay = 0;
                let wait = backoff.next_wait(uptime, &mut rand::rng());
                warn!(error = %e, ?wait, "tunnel attempt failed; retrying");
                reconnect(Cause::Failed);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

attribute_values! {
    /// Why the agent dials again: `hawser.cause` of `hawser.agent.reconnects`.
    pub enum Cause: "hawser.cause" {
        /// A tunnel that was up ended.
        Closed = "closed",
        /// An attempt failed; the agent backs off.
        Failed = "failed",
        /// A relay that is draining or holds another of the agent's tunnels refused it.
        RelayElsewhere = "relay_elsewhere",
        /// The relay asked the tunnel to move.
        Moved = "moved",
    }
}

/// Counts an attempt after a tunnel ended or an attempt failed, by `cause`.
fn reconnect(cause: Cause) {
    metrics::count(&metrics::metrics().reconnects, cause);
}

/// Where a tunnel goes among the agent's others.
struct Place<'a> {
    slot: usize,
    slots: &'a Slots,
    fleet: &'a tokio::sync::watch::Sender<bool>,
    /// The tunnel this one replaces.
    moving: &'a mut Option<Leaving>,
}

/// One tunnel: connect by the configured transport, say hello, serve streams until it ends.
async fn session(
    config: &AgentConfig,
    dialer: &link::Dialer,
    state: &Arc<AgentState>,
    auto: &mut Auto,
    place: Place<'_>,
) -> Result<Ended, SessionError> {
    let relay = &config.relay;
    let n = u8::try_from(place.slot).unwrap_or(u8::MAX);
    if place.moving.as_ref().is_some_and(|m| m.gone.is_cancelled()) {
        // The old tunnel ended meanwhile: nothing to retire, and its relay is welcome again.
        *place.moving = None;
    }
    let held = place
        .slots
        .elsewhere(place.slot, place.moving.as_ref().map(|m| m.from.as_str()));
    let held = held.as_slice();
    let (link, welcome) = match relay.transport {
        Transport::Quic => dialer.quic(tunnel::HANDSHAKE_TIMEOUT, n, held).await?,
        Transport::Tcp => dialer.tcp(n, held).await?,
        Transport::Auto if auto.blocked => match dialer.tcp(n, held).await {
            Ok(up) => up,
            Err(e) => {
                // TCP fails too: the next attempt tries QUIC again rather than TCP for ever.
                auto.blocked = false;
                return Err(e);
            }
        },
        Transport::Auto => match dialer
            .quic(Duration::from_secs(relay.quic_fallback_secs), n, held)
            .await
        {
            Ok(up) => up,
            // Where QUIC once worked, one silent dial is more likely a relay restarting (it leaves
            // attempts unanswered meanwhile) than UDP blocked: only a second one in a row falls back.
            Err(e) if e.quic_unreachable() && auto.worked && auto.timeouts == 0 => {
                auto.timeouts += 1;
                return Err(e);
            }
            Err(e) if e.quic_unreachable() => {
                warn!(
                    error = %e,
                    probe_every_secs = relay.quic_probe_secs,
                    "no QUIC handshake with the relay; using TCP, and trying QUIC again later"
                );
                auto.blocked = true;
                dialer.tcp(n, held).await?
            }
            Err(e) => return Err(e),
        },
    };
    let avoid = place.moving.as_ref().map(|m| m.from.as_str());
    if !place.slots.claim(place.slot, &welcome.relay, avoid) {
        // Registered already, so possibly carrying requests: retired, not closed.
        duplicate::retire(link, state, welcome.relay.as_str().into());
        return Err(SessionError::SameRelay(welcome.relay));
    }
    if welcome.fleet {
        place.fleet.send_if_modified(|f| !std::mem::replace(f, true));
    }
    if let Some(old) = place.moving.take() {
        old.retire.retire(&state.tasks);
        info!(from = %old.from, to = %welcome.relay, "moved: the tunnel to the draining relay is retired");
    }
    let relay_name: Arc<str> = welcome.relay.into();
    match link {
        link::Link::Quic(connection, control) => {
            *auto = Auto {
                worked: true,
                ..Auto::default()
            };
            info!(relay = %relay_name, session = welcome.session, transport = "quic", "tunnel up");
            let _up = state.tunnel_up(true);
            Ok(serve_quic(connection, control, state, relay_name).await)
        }
        link::Link::Tcp(side) => {
            info!(relay = %relay_name, session = welcome.session, transport = "tcp", "tunnel up");
            let _up = state.tunnel_up(false);
            let retire = CancellationToken::new();
            let moving = CancellationToken::new();
            let serving = {
                let (state, relay_name) = (state.clone(), relay_name.clone());
                let (stop, retire, moving) = (state.stop.clone(), retire.clone(), moving.clone());
                let tasks = state.tasks.clone();
                tasks.spawn(
                    async move {
                        let why = side
                            .serve(
                                move |send, recv| {
                                    state.tasks.spawn(
                                        serve::stream(send, recv, state.clone(), relay_name.clone()).in_current_span(),
                                    );
                                },
                                retire,
                                stop,
                                moving,
                            )
                            .await;
                        info!(reason = %why, "tcp tunnel ended");
                        why
                    }
                    .in_current_span(),
                )
            };
            let mut serving = serving;
            let ended = |e: Result<String, tokio::task::JoinError>| Ended::Closed(e.unwrap_or_else(|e| e.to_string()));
            // The tunnel serves on after a move notice until it ends; `gone` says when.
            let moved = |serving: tokio::task::JoinHandle<String>, retire| {
                let gone = CancellationToken::new();
                let told = gone.clone();
                state.tasks.spawn(async move {
                    let _ = serving.await;
                    told.cancel();
                });
                Ended::Moved(Retire::Tcp(retire), gone)
            };
            if relay.transport != Transport::Auto {
                return Ok(tokio::select! {
                    e = &mut serving => ended(e),
                    () = moving.cancelled() => moved(serving, retire),
                });
            }
            let probe = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(relay.quic_probe_secs)).await;
                    // Where the other tunnels are now, not when this one came up; and the relay
                    // that welcomes QUIC is claimed as any other (it may differ from TCP's).
                    let held = place.slots.elsewhere(place.slot, None);
                    match dialer
                        .quic(Duration::from_secs(relay.quic_fallback_secs), n, &held)
                        .await
                    {
                        Ok((link, welcome)) if place.slots.claim(place.slot, &welcome.relay, None) => {
                            return (link, welcome);
                        }
                        Ok((link, welcome)) => duplicate::retire(link, state, welcome.relay.as_str().into()),
                        Err(e) => debug!(error = %e, "QUIC still unreachable"),
                    }
                }
            };
            let (link, welcome) = tokio::select! {
                e = &mut serving => return Ok(ended(e)),
                () = moving.cancelled() => return Ok(moved(serving, retire)),
                up = probe => up,
            };
            // The relay now routes to the QUIC session (same instance and link); the TCP tunnel
            // takes no new streams and ends once those it carries are done.
            retire.cancel();
            *auto = Auto {
                worked: true,
                ..Auto::default()
            };
            let relay_name: Arc<str> = welcome.relay.into();
            info!(relay = %relay_name, session = welcome.session, transport = "quic", "QUIC reachable again: tunnel moved to QUIC");
            match link {
                link::Link::Quic(connection, control) => Ok(serve_quic(connection, control, state, relay_name).await),
                link::Link::Tcp(_) => Ok(Ended::Closed("unexpected tcp link".into())),
            }
        }
    }
}

/// Serves a QUIC tunnel's streams until the connection ends, or until the relay asks the agent
/// to move (the tunnel then goes on serving in the background until it ends).
async fn serve_quic(
    connection: quinn::Connection,
    control: tunnel::Stream,
    state: &Arc<AgentState>,
    relay: Arc<str>,
) -> Ended {
    let (mut control_recv, control_send) = control.into_inner();
    let mut accepting = Box::pin(accept_quic(connection, state.clone(), relay).in_current_span());
    tokio::select! {
        reason = &mut accepting => Ended::Closed(reason),
        notice = read_notice(&mut control_recv) => {
            let Notice::Move { reason } = notice;
            info!(%reason, "the relay asks this tunnel to move");
            let gone = CancellationToken::new();
            let told = gone.clone();
            state.tasks.spawn(async move {
                let reason = accepting.await;
                info!(%reason, "the moved tunnel ended");
                told.cancel();
            });
            Ended::Moved(Retire::Quic(control_send, control_recv), gone)
        }
    }
}

/// Serves a QUIC tunnel's streams until the connection ends, and says why it ended.
async fn accept_quic(connection: quinn::Connection, state: Arc<AgentState>, relay: Arc<str>) -> String {
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                state
                    .tasks
                    .spawn(serve::stream(send, recv, state.clone(), relay.clone()).in_current_span());
            }
            Err(reason) => return reason.to_string(),
        }
    }
}

/// The next notice on the relay's side of the control stream; never resolves once that side
/// ends or fails (the connection's close says why).
async fn read_notice(control: &mut quinn::RecvStream) -> Notice {
    match crate::proto::read_frame::<_, Notice>(control).await {
        Ok(notice) => notice,
        Err(e) => {
            debug!(error = %e, "the relay's control stream ended");
            std::future::pending().await
        }
    }
}

mod duplicate;

#[cfg(test)]
mod tests;
