//! Tunnel events in the relay's audit trail: an agent registered, left, was revoked, or probed
//! (`hawser doctor`: welcomed, nothing registered). They sit
//! beside the request lines (same sink, same ordering) with an `event` field instead of a
//! `request_id`, so who served a cluster, and from where, is on record: an agent joining a
//! cluster beside others (it gets a share of that cluster's requests) names them.

use std::time::SystemTime;

use serde::Serialize;

use super::{AuditLog, rfc3339};

/// One tunnel event.
#[derive(Debug, Serialize)]
pub struct AgentEvent<'a> {
    /// `agent_registered`, `agent_gone`, `agent_revoked` or `agent_probed`.
    pub event: &'static str,
    /// The cluster.
    pub cluster: &'a str,
    /// The agent instance.
    pub agent: &'a str,
    /// The session id in this relay (0 for a probe: none).
    pub session: u64,
    /// The agent's address as the relay saw it.
    pub peer: String,
    /// Other instances serving the cluster when this one registered.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub beside: &'a [String],
    /// Why the session ended (`agent_gone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    component: &'static str,
    instance: &'a str,
    #[serde(flatten)]
    event: &'a AgentEvent<'a>,
}

impl AuditLog {
    /// Records a tunnel event.
    pub fn agent_event(&self, event: &AgentEvent<'_>) {
        self.write(&Line {
            time: rfc3339(SystemTime::now()),
            component: self.component,
            instance: &self.instance,
            event,
        });
    }
}
