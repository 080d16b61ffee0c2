//! Reload: on SIGHUP or when the file's content changes (`crate::reload`), re-read the relay's
//! configuration and apply what can change while it runs.
//!
//! Applied: `[[clusters]]` (tokens added, rotated or revoked, clusters added or removed, a
//! cluster's trust model changed), `[[access]]`, `[[issuers]]` and `[issuer]`, `[limits]` (but
//! the two `agent_*` ones) and `[audit]` (its file is also reopened, for log rotation). Every
//! session the new cluster table would not admit is closed with [`close_code::REVOKED`]; every
//! other tunnel, and every exchange in flight, goes on. A file that does not load, validate or
//! build (an issuer key that cannot be read) is refused as a whole, with the cause — file and
//! line for a TOML error — and the running configuration stays. Settings bound to a socket, a
//! key or a task started once keep their running values; a reload that changes them says which
//! in one warning.

use std::path::PathBuf;

use tracing::{error, info, warn};

use super::agents::close_code;
use super::clusters::ClusterTable;
use super::{RelayError, RelayState, keys, live};
use crate::audit::AgentEvent;
use crate::config::RelayConfig;
use crate::reload::{Outcome, Reloads, Trigger, counted};

/// The settings that take effect only at a restart, each as its key and its value as written.
pub(super) struct Fixed(Vec<(&'static str, String)>);

impl Fixed {
    /// The running values of `config`'s restart-only settings.
    pub fn of(config: &RelayConfig) -> Self {
        let shown = |value: &dyn std::fmt::Debug| format!("{value:?}");
        Self(vec![
            ("instance", shown(&config.instance)),
            ("listen", shown(&config.listen)),
            ("agent_listen", shown(&config.agent_listen)),
            ("tls", shown(&config.tls)),
            ("assertions", shown(&config.assertions)),
            ("tunnel", shown(&config.tunnel)),
            ("registry", shown(&config.registry)),
            ("peers", shown(&config.peers)),
            ("drain", shown(&config.drain)),
            ("telemetry", shown(&config.telemetry)),
            ("admin", shown(&config.admin)),
            (
                "limits.agent_hello_failures_per_minute",
                shown(&config.limits.agent_hello_failures_per_minute),
            ),
            (
                "limits.agent_unproven_per_source",
                shown(&config.limits.agent_unproven_per_source),
            ),
        ])
    }

    /// The keys whose value in `config` differs from the running one.
    fn changed(&self, config: &RelayConfig) -> Vec<&'static str> {
        let new = Self::of(config);
        self.0
            .iter()
            .zip(new.0)
            .filter(|((_, running), (_, new))| *running != *new)
            .map(|((key, _), _)| *key)
            .collect()
    }
}

/// Reloads at every SIGHUP and change of the file; never completes (nor does anything without a
/// config path).
pub(super) async fn watch(path: Option<PathBuf>, state: &RelayState, fixed: Fixed) {
    let Some(path) = path else {
        return std::future::pending().await;
    };
    let mut reloads = Reloads::new(&path);
    loop {
        let trigger = reloads.next().await;
        reload(&path, state, &fixed, trigger);
    }
}

/// Applies the file at `path`, or keeps everything if it is not valid.
pub(super) fn reload(path: &std::path::Path, state: &RelayState, fixed: &Fixed, trigger: Trigger) {
    let config: RelayConfig = match crate::config::load(path) {
        Ok(config) => config,
        Err(e) => {
            counted(Outcome::Refused);
            return error!(trigger = trigger.as_str(), error = %e, "reload refused; the running configuration stays");
        }
    };
    let built = live::Live::new(&config, Some(&state.live.current())).and_then(|live| {
        keys::check_distinct(&config.tls.cert_file, live.issuer.as_ref(), state.minter.as_ref())?;
        state.audit.reopen(&config.audit).map_err(RelayError::Audit)?;
        Ok(live)
    });
    let live = match built {
        Ok(live) => live,
        Err(e) => {
            counted(Outcome::Refused);
            return error!(
                trigger = trigger.as_str(), file = %path.display(), error = %e,
                "reload refused; the running configuration stays"
            );
        }
    };
    let restart = fixed.changed(&config);
    if !restart.is_empty() {
        warn!(
            settings = restart.join(", "),
            "these settings changed but take effect only at a restart; they keep their running values"
        );
    }
    state.live.replace(live);
    state.clusters.replace(ClusterTable::new(&config.clusters));
    let closed = close_unadmitted(state);
    counted(Outcome::Applied);
    info!(
        trigger = trigger.as_str(),
        clusters = config.clusters.len(),
        access_rules = config.access.len(),
        closed = closed,
        "configuration reloaded: clusters, access, issuers, limits and audit applied"
    );
}

/// Closes every session the current cluster table no longer admits; how many.
fn close_unadmitted(state: &RelayState) -> usize {
    let table = state.clusters.current();
    let closed = state.registry.close_unless(
        |cluster, s| table.admits(cluster, &s.admitted.token_digest, s.admitted.caller_audience.as_deref()),
        close_code::REVOKED,
        b"agent token revoked, cluster removed, or the cluster's trust model changed",
    );
    for (cluster, agent, session) in &closed {
        warn!(%cluster, %agent, session, "agent session closed: its token was revoked, its cluster removed or its trust model changed");
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
    closed.len()
}
