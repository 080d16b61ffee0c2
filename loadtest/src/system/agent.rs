//! The loaded clusters' agents: their configuration, their processes, and where their admin
//! listeners are.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{ADMIN_LISTENING, ASSERTION_ISSUER, Proc, System, spawn_agent};

impl System {
    /// Starts an agent of `cluster` named `instance`.
    pub fn spawn_agent(&self, cluster: &str, instance: &str) -> Result<Proc> {
        let config = self.dir.join(format!("{instance}.toml"));
        fs::write(
            &config,
            format!(
                r#"instance = "{instance}"
cluster = "{cluster}"
token_file = "agent.token"
mode = "identity"

[relay]
address = "{udp}"
tcp_address = "{front}"
transport = "{transport}"
server_name = "localhost"
ca_file = "relay.crt"

[apiserver]
kubeconfig = "backend.kubeconfig"

[assertions]
issuer = "{ASSERTION_ISSUER}"
jwks_url = "https://{front}/.well-known/hawser/assertion-jwks.json"
jwks_ca_file = "relay.crt"

[reconnect]
initial_backoff_ms = 100
max_backoff_ms = 2000

[audit]
output = "none"

{extra}"#,
                udp = self.relay_udp,
                front = self.relay_front,
                transport = self.transport,
                extra = self.extra_toml,
            ),
        )?;
        spawn_agent(&self.hawser, &config, &self.dir, instance)
    }

    /// The admin listeners (`[admin] listen` in `extra_toml`) of the relay and of every loaded
    /// cluster's agent, in that order, as their logs name them, within `within`.
    pub async fn admin_addrs(&mut self, within: Duration) -> Result<Vec<SocketAddr>> {
        let deadline = Instant::now() + within;
        let relay = self
            .wait_events("the relay's admin listener", within, |e| e.admin.is_some())
            .await?
            .admin
            .context("the relay logged no admin listener")?;
        let mut addrs = vec![relay];
        for (agent, instance) in self.agents.iter_mut().zip(&self.agent_instances) {
            let log = self.dir.join(format!("{instance}.log"));
            loop {
                if let Some(addr) = logged_admin(&log) {
                    addrs.push(addr);
                    break;
                }
                agent.ensure_running(&log)?;
                if Instant::now() >= deadline {
                    bail!(
                        "{} logged no admin listener within {within:?}; see {}",
                        agent.name,
                        log.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(addrs)
    }
}

/// The address in the admin listener's line of a JSON log, if it has one yet.
fn logged_admin(log: &Path) -> Option<SocketAddr> {
    fs::read_to_string(log).ok()?.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v.get("message")?.as_str()? != ADMIN_LISTENING {
            return None;
        }
        v.get("admin")?.as_str()?.parse().ok()
    })
}
