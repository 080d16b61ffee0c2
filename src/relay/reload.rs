//! SIGHUP: re-read the relay's configuration and apply its `[[clusters]]`.
//!
//! A revoked or rotated agent token, a new cluster, or a cluster switched between relay
//! assertions and callers' own tokens takes effect without a restart: the cluster table is
//! replaced, and every session that the new table would not admit (its token is gone, or its
//! cluster's trust model changed) is closed with [`close_code::REVOKED`]; the tunnels of every
//! other cluster stay up. A configuration that does not load or validate is refused as a whole
//! and the running one stays. Other sections take effect at the next restart.

use std::path::PathBuf;

use tracing::{error, info, warn};

use super::RelayState;
use super::agents::close_code;
use super::clusters::ClusterTable;
use crate::audit::AgentEvent;
use crate::config::RelayConfig;

/// Reloads on every SIGHUP; never completes (nor does anything without a config path).
pub(super) async fn on_hangup(path: Option<PathBuf>, state: &RelayState) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Some(path), Ok(mut hangup)) = (path, signal(SignalKind::hangup())) else {
        return std::future::pending().await;
    };
    while hangup.recv().await.is_some() {
        reload(&path, state);
    }
    std::future::pending().await
}

/// Applies the `[[clusters]]` of the file at `path`, or keeps everything if it is not valid.
pub(super) fn reload(path: &std::path::Path, state: &RelayState) {
    let config: RelayConfig = match crate::config::load(path) {
        Ok(config) => config,
        Err(e) => return error!(error = %e, "reload refused; the running configuration stays"),
    };
    let running = state.minter.as_ref().map(|m| m.issuer());
    if config.assertions.as_ref().map(|a| a.issuer.as_str()) != running {
        warn!("[assertions] changed: it takes effect at the next restart");
    }
    state.clusters.replace(ClusterTable::new(&config.clusters));
    let table = state.clusters.current();
    let closed = state.registry.close_unless(
        |cluster, s| table.admits(cluster, &s.admitted.token_digest, s.admitted.caller_audience.as_deref()),
        close_code::REVOKED,
        b"agent token revoked or the cluster's trust model changed",
    );
    for (cluster, agent, session) in &closed {
        warn!(%cluster, %agent, session, "agent session closed: its token was revoked or its cluster's trust model changed");
        state.audit.agent_event(&AgentEvent {
            event: "agent_revoked",
            cluster,
            agent,
            session: *session,
            peer: String::new(),
            beside: &[],
            reason: None,
        });
    }
    info!(
        clusters = config.clusters.len(),
        closed = closed.len(),
        "reloaded [[clusters]]; other settings take effect at the next restart"
    );
}
