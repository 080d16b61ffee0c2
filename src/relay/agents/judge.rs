//! Judging an agent's hello: plain names, its cluster's token, where its other tunnels are,
//! and the trust model; refusals are charged to the source and logged at a bounded rate.

use std::net::IpAddr;

use tracing::warn;

use super::{REFUSALS_LOGGED_PER_MINUTE, Sessions, close_code};
use crate::proto::{Accepts, Hello};
use crate::relay::registry::Admission;
use crate::telemetry::LogBudget;

/// Judges a hello: plain names, a token of the cluster it names, and the same trust model as
/// this relay's configuration for that cluster. A refusal is the close code and reason.
pub(super) fn judge(hello: &Hello, source: IpAddr, sessions: &Sessions) -> Result<Admission, (u32, String)> {
    if !crate::config::valid_cluster_name(&hello.cluster) || !crate::config::valid_instance_name(&hello.instance) {
        sessions.hello_failures.charge(source);
        sessions
            .refusal_log
            .refused(&hello.cluster, &hello.instance, "malformed cluster or instance name");
        return Err((
            close_code::BAD_HELLO,
            "malformed hello: cluster or instance name".to_owned(),
        ));
    }
    let table = sessions.clusters.current();
    let Some(token_digest) = table.verify(&hello.cluster, &hello.token) else {
        sessions.hello_failures.charge(source);
        sessions
            .refusal_log
            .refused(&hello.cluster, &hello.instance, "unknown cluster or wrong token");
        return Err((close_code::REFUSED, "unknown cluster or wrong agent token".to_owned()));
    };
    // Proven, so the agent may say where its other tunnels are: not charged.
    if hello.held.contains(&sessions.relay) {
        return Err((
            close_code::HELD_HERE,
            format!("another of this agent's tunnels is on relay {}", sessions.relay),
        ));
    }
    let caller_audience = table.caller_audience(&hello.cluster).map(str::to_owned);
    let ours = match (&caller_audience, &sessions.assertion_issuer) {
        (Some(audience), _) => Accepts::CallerToken {
            audiences: vec![audience.clone()],
        },
        (None, Some(issuer)) => Accepts::Assertion { issuer: issuer.clone() },
        // Validated at start: a cluster without a caller audience needs [assertions].
        (None, None) => return Err((close_code::MISMATCH, "this relay cannot vouch for callers".to_owned())),
    };
    if hello.accepts != ours {
        let why = mismatch(&hello.cluster, &ours, &hello.accepts);
        warn!(cluster = %hello.cluster, agent = %hello.instance, reason = %why, "agent refused: trust model mismatch");
        return Err((close_code::MISMATCH, why));
    }
    Ok(Admission {
        token_digest,
        caller_audience,
    })
}

/// What to tell an agent that checks callers another way than the relay vouches for them.
fn mismatch(cluster: &str, ours: &Accepts, theirs: &Accepts) -> String {
    let describe = |a: &Accepts| match a {
        Accepts::Assertion { issuer } => format!("relay assertions from issuer {issuer:?} ([assertions] issuer)"),
        Accepts::CallerToken { audiences } => {
            format!("callers' own tokens for audiences {audiences:?} ([[issuers]] audiences)")
        }
    };
    format!(
        "cluster {cluster}: this relay sends {}, but the agent accepts {}",
        describe(ours),
        describe(theirs)
    )
}

/// Logs refused hellos at warn, at most [`REFUSALS_LOGGED_PER_MINUTE`] a minute; the line after a
/// quiet spell says how many were not logged.
pub struct RefusalLog(LogBudget);

impl Default for RefusalLog {
    fn default() -> Self {
        Self(LogBudget::per_minute(REFUSALS_LOGGED_PER_MINUTE))
    }
}

impl RefusalLog {
    pub(super) fn refused(&self, cluster: &str, instance: &str, why: &str) {
        if let Some(suppressed) = self.0.take() {
            warn!(cluster = %cluster, agent = %instance, reason = why, suppressed, "agent refused");
        }
    }

    /// An attempt ignored because its source spent its hello failures: an agent (or `hawser
    /// doctor`) there is locked out until they refill, which its operator cannot see otherwise.
    pub(crate) fn throttled(&self, source: std::net::IpAddr, transport: &str) {
        if let Some(suppressed) = self.0.take() {
            warn!(
                net.peer.address = %source,
                transport,
                suppressed,
                "agent attempt ignored: this address spent its hello failures (limits.agent_hello_failures_per_minute)"
            );
        }
    }
}
