//! The relay's answer to `hawser clusters` (`GET /.well-known/hawser/clusters`): every cluster,
//! its agents and the relays holding them. The innermost step of the report's path (`path`),
//! behind the same authentication and failed-authentication limit as a cluster's requests and an
//! admin access rule.
//!
//! This relay's own sessions come from its registry, which is current; the other relays' from
//! the fleet view, as the shared registry last told it. Nothing here waits on etcd.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response};

use super::RelayState;
use super::fleet::{Held, RelayRecord, SessionRecord};
use super::path::{bounded, take};
use super::refusal::Refusal;
use crate::audit::{Audit, rfc3339};
use crate::body::{Body, full};
use crate::overview::{Agent, Cluster, Overview, Relay};

/// Answers an admin's request for the overview.
#[derive(Clone)]
pub struct Report(pub(super) Arc<RelayState>);

impl tower::Service<Request<Body>> for Report {
    type Response = Response<Body>;
    type Error = Refusal;
    type Future = crate::step::StepFuture<Response<Body>, Refusal>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(report(self.0.clone(), req))
    }
}

async fn report(state: Arc<RelayState>, mut req: Request<Body>) -> Result<Response<Body>, Refusal> {
    let audit: Audit = take(&mut req)?;
    if req.method() != Method::GET {
        return Err(Refusal::ReportMethod(req.method().clone()));
    }
    let body = serde_json::to_string(&state.overview()).map_err(|e| Refusal::CannotReport(e.to_string()))?;
    audit.status(200);
    audit.add_out(body.len() as u64);
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(bounded(resp))
}

impl RelayState {
    /// The overview now: this relay's registry merged with the fleet view.
    pub(super) fn overview(&self) -> Overview {
        let draining = self.draining.load(std::sync::atomic::Ordering::Relaxed);
        let me = Relay {
            name: self.instance.clone(),
            peer: self.fleet.as_ref().map(|f| f.peer()),
            started: rfc3339(self.started),
            draining,
            protocol: crate::proto::VERSION,
        };
        let table = self.clusters.current();
        let fleet = self.fleet.as_ref().map(|f| f.view.snapshot());
        assemble(me, table.names(), self.registry.records(), fleet)
    }
}

/// The fleet view's relays by name and sessions by cluster (`View::snapshot`).
type Snapshot = (HashMap<String, RelayRecord>, HashMap<String, Vec<Held>>);

/// The overview of `me` from its configured cluster names, its own sessions (cluster, agent,
/// record) and, in a fleet, the view's relays and sessions. Entries of `me` in the view are
/// ignored: its own registry is current, the view may lag behind it.
pub fn assemble<'a>(
    me: Relay,
    configured: impl IntoIterator<Item = &'a str>,
    own: Vec<(String, String, SessionRecord)>,
    fleet: Option<Snapshot>,
) -> Overview {
    let mut clusters: BTreeMap<String, Vec<Agent>> = configured
        .into_iter()
        .map(|name| (name.to_owned(), Vec::new()))
        .collect();
    for (cluster, agent, record) in own {
        clusters
            .entry(cluster)
            .or_default()
            .push(agent_of(agent, me.name.clone(), record));
    }
    let mut relays = BTreeMap::new();
    if let Some((others, sessions)) = fleet {
        for (cluster, held) in sessions {
            let agents = clusters.entry(cluster).or_default();
            for Held { relay, agent, record } in held {
                if relay != me.name {
                    agents.push(agent_of(agent, relay, record));
                }
            }
        }
        for (name, record) in others.into_iter().filter(|(name, _)| *name != me.name) {
            let relay = Relay {
                peer: Some(record.peer),
                started: record.started,
                draining: record.draining,
                protocol: record.protocol,
                name: name.clone(),
            };
            relays.insert(name, relay);
        }
    }
    relays.insert(me.name.clone(), me.clone());
    Overview {
        relay: me.name,
        clusters: clusters
            .into_iter()
            .map(|(name, mut agents)| {
                agents.sort_by(|a, b| (&a.relay, &a.agent).cmp(&(&b.relay, &b.agent)));
                Cluster { name, agents }
            })
            .collect(),
        relays: relays.into_values().collect(),
    }
}

fn agent_of(agent: String, relay: String, record: SessionRecord) -> Agent {
    Agent {
        agent,
        relay,
        since: record.since,
        transport: record.transport,
        protocol: record.protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(since: &str, transport: &str) -> SessionRecord {
        SessionRecord {
            since: since.into(),
            transport: transport.into(),
            protocol: 3,
        }
    }

    fn me(peer: Option<&str>) -> Relay {
        Relay {
            name: "relay-0".into(),
            peer: peer.map(str::to_owned),
            started: "2026-12-01T10:00:00.000Z".into(),
            draining: false,
            protocol: 3,
        }
    }

    #[test]
    fn a_relay_of_its_own_lists_every_configured_cluster_and_itself() {
        let own = vec![
            (
                "dev".into(),
                "agent-b".into(),
                record("2026-12-01T10:02:00.000Z", "tcp"),
            ),
            (
                "dev".into(),
                "agent-a".into(),
                record("2026-12-01T10:01:00.000Z", "quic"),
            ),
        ];
        let overview = assemble(me(None), ["prod", "dev"], own, None);
        assert_eq!(overview.relay, "relay-0");
        let names: Vec<&str> = overview.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["dev", "prod"], "every configured cluster, by name");
        assert!(overview.cluster("prod").unwrap().agents.is_empty(), "prod is offline");
        let dev = &overview.cluster("dev").unwrap().agents;
        assert_eq!(
            dev.iter()
                .map(|a| (a.agent.as_str(), a.transport.as_str()))
                .collect::<Vec<_>>(),
            [("agent-a", "quic"), ("agent-b", "tcp")]
        );
        assert!(dev.iter().all(|a| a.relay == "relay-0" && a.protocol == 3));
        assert_eq!(overview.relays, [me(None)], "the relays list holds just itself");
    }

    #[test]
    fn a_fleet_relay_merges_its_own_registry_with_the_view_of_the_others() {
        let own = vec![(
            "alpha".into(),
            "agent-alpha".into(),
            record("2026-12-01T10:05:00.000Z", "quic"),
        )];
        let held = |relay: &str, agent: &str, since: &str| Held {
            relay: relay.into(),
            agent: agent.into(),
            record: record(since, "quic"),
        };
        let sessions = HashMap::from([
            (
                "alpha".to_owned(),
                // The view still has this relay's entry of an earlier tunnel: the registry wins.
                vec![held("relay-0", "agent-alpha", "2026-12-01T09:00:00.000Z")],
            ),
            (
                "beta".to_owned(),
                vec![
                    held("relay-2", "agent-beta-2", "2026-12-01T10:03:00.000Z"),
                    held("relay-1", "agent-beta-1", "2026-12-01T10:04:00.000Z"),
                ],
            ),
            // Configured elsewhere only: listed too, since the fleet knows it.
            (
                "gamma".to_owned(),
                vec![held("relay-1", "agent-gamma", "2026-12-01T10:06:00.000Z")],
            ),
            // A session this relay no longer has: gone from its registry, not yet from the view.
            (
                "delta".to_owned(),
                vec![held("relay-0", "agent-delta", "2026-12-01T10:07:00.000Z")],
            ),
        ]);
        let other = |peer: &str, draining: bool| RelayRecord {
            peer: peer.into(),
            protocol: 3,
            started: "2026-12-01T09:30:00.000Z".into(),
            draining,
        };
        let relays = HashMap::from([
            ("relay-1".to_owned(), other("10.0.0.1:7443", false)),
            ("relay-2".to_owned(), other("10.0.0.2:7443", true)),
            // The view's record of this relay: its own state wins.
            ("relay-0".to_owned(), other("stale:1", true)),
        ]);
        let overview = assemble(
            me(Some("10.0.0.0:7443")),
            ["alpha", "beta", "delta"],
            own,
            Some((relays, sessions)),
        );
        let rows: Vec<String> = overview
            .clusters
            .iter()
            .flat_map(|c| {
                let agents: Vec<String> = c
                    .agents
                    .iter()
                    .map(|a| format!("{} {} {} {}", c.name, a.agent, a.relay, a.since))
                    .collect();
                if agents.is_empty() {
                    vec![format!("{} offline", c.name)]
                } else {
                    agents
                }
            })
            .collect();
        assert_eq!(
            rows,
            [
                "alpha agent-alpha relay-0 2026-12-01T10:05:00.000Z",
                "beta agent-beta-1 relay-1 2026-12-01T10:04:00.000Z",
                "beta agent-beta-2 relay-2 2026-12-01T10:03:00.000Z",
                "delta offline",
                "gamma agent-gamma relay-1 2026-12-01T10:06:00.000Z",
            ]
        );
        let relays: Vec<(&str, Option<&str>, bool)> = overview
            .relays
            .iter()
            .map(|r| (r.name.as_str(), r.peer.as_deref(), r.draining))
            .collect();
        assert_eq!(
            relays,
            [
                ("relay-0", Some("10.0.0.0:7443"), false),
                ("relay-1", Some("10.0.0.1:7443"), false),
                ("relay-2", Some("10.0.0.2:7443"), true),
            ]
        );
    }

    #[test]
    fn the_json_has_the_documented_fields() {
        let own = vec![(
            "dev".into(),
            "agent-a".into(),
            record("2026-12-01T10:01:00.000Z", "quic"),
        )];
        let json = serde_json::to_value(assemble(me(None), ["dev", "prod"], own, None)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "relay": "relay-0",
                "clusters": [
                    {"name": "dev", "agents": [{
                        "agent": "agent-a", "relay": "relay-0", "since": "2026-12-01T10:01:00.000Z",
                        "transport": "quic", "protocol": 3,
                    }]},
                    {"name": "prod", "agents": []},
                ],
                "relays": [{
                    "name": "relay-0", "peer": null, "started": "2026-12-01T10:00:00.000Z",
                    "draining": false, "protocol": 3,
                }],
            })
        );
    }
}
