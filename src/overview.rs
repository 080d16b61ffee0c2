//! What `hawser clusters` shows: the JSON a relay answers at [`PATH`] to a caller an admin access
//! rule names. A leaf module: the relay assembles it (`relay::overview`), the client prints it
//! (`client::clusters`).

use serde::{Deserialize, Serialize};

/// Where a relay answers with its [`Overview`], on the callers' port.
pub const PATH: &str = "/.well-known/hawser/clusters";

/// Every cluster, its connected agents and the relays holding them, as one relay sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overview {
    /// The relay that answered (its instance name).
    pub relay: String,
    /// Every cluster by name: those configured at the answering relay, and any other the fleet's
    /// registry names.
    pub clusters: Vec<Cluster>,
    /// Every relay of the fleet by name (only the answering one without a shared registry).
    pub relays: Vec<Relay>,
}

/// One cluster and its agents; none means it is offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    /// Its connected agents, by relay and then agent instance.
    pub agents: Vec<Agent>,
}

/// One agent tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// The agent's instance name.
    pub agent: String,
    /// The relay holding its tunnel.
    pub relay: String,
    /// When the tunnel came up (RFC 3339).
    pub since: String,
    /// `quic` or `tcp`.
    pub transport: String,
    /// The tunnel's wire version.
    pub protocol: u8,
}

/// One relay of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    /// Its instance name.
    pub name: String,
    /// `host:port` of its peer link (none without a shared registry).
    pub peer: Option<String>,
    /// When it started (RFC 3339).
    pub started: String,
    /// Whether it is draining (shutting down: its peers prefer others).
    pub draining: bool,
    /// The tunnel wire version it speaks.
    pub protocol: u8,
}

impl Overview {
    /// The cluster named `name`, if listed.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}
