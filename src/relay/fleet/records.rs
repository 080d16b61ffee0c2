//! What a relay writes in the shared registry, and the fleet as a relay sees it from there.
//!
//! ```text
//! {prefix}/relays/{relay}                    -> RelayRecord   (under the relay's lease)
//! {prefix}/sessions/{cluster}/{relay}/{agent} -> SessionRecord (under the same lease)
//! ```
//!
//! Names are those the relay validated (cluster names are DNS labels, instance names hold no
//! `/`), so `/` separates them unambiguously. What another relay wrote is input from outside: a
//! key or value that does not parse, or names that are not plain names, is ignored.

use std::collections::HashMap;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::config::{valid_cluster_name, valid_instance_name};

/// A relay's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRecord {
    /// `host:port` of its peer listener.
    pub peer: String,
    /// The tunnel wire version it speaks.
    pub protocol: u8,
    /// When it started (RFC 3339).
    pub started: String,
    /// Whether it is draining: peers then prefer another relay for its clusters.
    #[serde(default)]
    pub draining: bool,
}

/// One agent tunnel a relay holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// When the tunnel came up (RFC 3339).
    pub since: String,
    /// `quic` or `tcp`.
    pub transport: String,
    /// The wire version of the tunnel.
    pub protocol: u8,
}

/// A parsed registry key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A relay's presence.
    Relay(String),
    /// A session: cluster, relay, agent.
    Session(String, String, String),
}

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (no trailing `/`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Everything of this fleet.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// A relay's presence key.
    pub fn relay(&self, relay: &str) -> String {
        format!("{}/relays/{relay}", self.prefix)
    }

    /// A session's key.
    pub fn session(&self, cluster: &str, relay: &str, agent: &str) -> String {
        format!("{}/sessions/{cluster}/{relay}/{agent}", self.prefix)
    }

    /// What `key` names, if it is one of ours and well formed.
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let parsed = match (parts.next()?, parts.next(), parts.next(), parts.next(), parts.next()) {
            ("relays", Some(relay), None, None, None) if valid_instance_name(relay) => Key::Relay(relay.to_owned()),
            ("sessions", Some(cluster), Some(relay), Some(agent), None)
                if valid_cluster_name(cluster) && valid_instance_name(relay) && valid_instance_name(agent) =>
            {
                Key::Session(cluster.to_owned(), relay.to_owned(), agent.to_owned())
            }
            _ => return None,
        };
        Some(parsed)
    }
}

/// One session as the fleet view holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The relay holding the tunnel.
    pub relay: String,
    /// The agent instance.
    pub agent: String,
    /// What the relay wrote of it.
    pub record: SessionRecord,
}

/// The fleet as the registry says it is: relays and the sessions each holds. Fed by the etcd
/// watch; read on every request for a cluster this relay holds no tunnel of.
#[derive(Default)]
pub struct View {
    relays: DashMap<String, RelayRecord>,
    sessions: DashMap<String, Vec<Held>>,
    /// Per relay, cancelled once it drains or leaves: the watches and followed logs forwarded
    /// through it then end cleanly, and their clients re-establish them elsewhere.
    hops: DashMap<String, tokio_util::sync::CancellationToken>,
}

/// A relay that holds a tunnel of a cluster, as a route to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The relay's instance name.
    pub relay: String,
    /// Its peer address.
    pub peer: String,
}

impl View {
    /// Applies a put of `key` with `value`; false if either did not parse.
    pub fn put(&self, key: Key, value: &[u8]) -> bool {
        match key {
            Key::Relay(relay) => match serde_json::from_slice::<RelayRecord>(value) {
                Ok(record) => {
                    if record.draining {
                        self.end_hops(&relay);
                    }
                    self.relays.insert(relay, record);
                    true
                }
                Err(_) => false,
            },
            Key::Session(cluster, relay, agent) => match serde_json::from_slice::<SessionRecord>(value) {
                Ok(record) => {
                    let mut held = self.sessions.entry(cluster).or_default();
                    held.retain(|h| !(h.relay == relay && h.agent == agent));
                    held.push(Held { relay, agent, record });
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// Applies a delete of `key`.
    pub fn delete(&self, key: Key) {
        match key {
            Key::Relay(relay) => {
                self.end_hops(&relay);
                self.relays.remove(&relay);
            }
            Key::Session(cluster, relay, agent) => {
                if let Some(mut held) = self.sessions.get_mut(&cluster) {
                    held.retain(|h| !(h.relay == relay && h.agent == agent));
                }
                self.sessions.remove_if(&cluster, |_, held| held.is_empty());
            }
        }
    }

    /// What ends the long streams forwarded through `relay` (see [`View`]).
    pub fn hop_end(&self, relay: &str) -> tokio_util::sync::CancellationToken {
        self.hops.entry(relay.to_owned()).or_default().clone()
    }

    fn end_hops(&self, relay: &str) {
        if let Some((_, token)) = self.hops.remove(relay) {
            token.cancel();
        }
    }

    /// Forgets everything (before a full read of the registry).
    pub fn clear(&self) {
        self.relays.clear();
        self.sessions.clear();
    }

    /// The relays other than `me` that hold a tunnel of `cluster` and are present, those not
    /// draining first; `turn` rotates the order within each group to spread the load.
    pub fn holders(&self, cluster: &str, me: &str, turn: usize) -> Vec<Holder> {
        let relays: Vec<String> = match self.sessions.get(cluster) {
            Some(held) => {
                let mut relays: Vec<String> = held.iter().map(|h| h.relay.clone()).filter(|r| r != me).collect();
                relays.sort();
                relays.dedup();
                relays
            }
            None => return Vec::new(),
        };
        let mut ready = Vec::new();
        let mut draining = Vec::new();
        for relay in relays {
            // The guard is dropped at the end of each iteration: nothing awaits under it.
            if let Some(record) = self.relays.get(&relay) {
                let holder = Holder {
                    relay,
                    peer: record.peer.clone(),
                };
                if record.draining {
                    draining.push(holder);
                } else {
                    ready.push(holder);
                }
            }
        }
        for group in [&mut ready, &mut draining] {
            if !group.is_empty() {
                let n = turn % group.len();
                group.rotate_left(n);
            }
        }
        ready.extend(draining);
        ready
    }

    /// Every cluster's sessions and every relay, for `hawser clusters` and tests.
    pub fn snapshot(&self) -> (HashMap<String, RelayRecord>, HashMap<String, Vec<Held>>) {
        let relays = self
            .relays
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let sessions = self
            .sessions
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        (relays, sessions)
    }
}

#[cfg(test)]
mod tests;
