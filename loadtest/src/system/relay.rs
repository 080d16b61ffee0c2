//! The relay process and what its JSON log says: its listening line, agents registered and
//! gone, and its admin listener.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use super::Proc;

/// The log line of a relay's or agent's admin listener; its field `admin` is the address.
pub(crate) const ADMIN_LISTENING: &str = "admin listener (metrics, probes)";

/// What the relay's log has said so far.
#[derive(Default, Clone)]
pub struct RelayEvents {
    /// Front door (TCP) and agent listener (UDP).
    pub(crate) listening: Option<(SocketAddr, SocketAddr)>,
    /// The admin listener (`/metrics`), with `[admin] listen`.
    pub(crate) admin: Option<SocketAddr>,
    /// `agent registered` lines by cluster.
    registered: HashMap<String, usize>,
    /// `agent gone` lines by cluster.
    gone: HashMap<String, usize>,
    /// The relay's stderr closed.
    exited: bool,
}

impl RelayEvents {
    /// Sessions registered and not yet gone, over clusters whose name starts with `prefix`.
    pub fn connected(&self, prefix: &str) -> usize {
        let count = |m: &HashMap<String, usize>| m.iter().filter(|(c, _)| c.starts_with(prefix)).map(|(_, n)| n).sum();
        let (up, down): (usize, usize) = (count(&self.registered), count(&self.gone));
        up.saturating_sub(down)
    }

    /// Whether the relay's log has ended (it exited).
    pub fn exited(&self) -> bool {
        self.exited
    }

    /// `agent gone` lines over clusters whose name starts with `prefix`.
    pub fn gone(&self, prefix: &str) -> usize {
        self.gone
            .iter()
            .filter(|(c, _)| c.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Starts `hawser relay` with `config`, its log in `dir`/relay.log.
pub(crate) fn spawn_relay(hawser: &Path, dir: &Path, config: &Path) -> Result<(Proc, watch::Receiver<RelayEvents>)> {
    spawn_relay_logging(hawser, config, &dir.join("relay.log"), "relay")
}

/// Starts `hawser relay` with `config`, its JSON log copied to `log` and followed for events;
/// `name` is what messages call it.
pub(crate) fn spawn_relay_logging(
    hawser: &Path,
    config: &Path,
    log: &Path,
    name: &str,
) -> Result<(Proc, watch::Receiver<RelayEvents>)> {
    let mut child = Command::new(hawser)
        .args(["--log-format", "json", "relay", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", hawser.display()))?;
    let stderr = child.stderr.take().context("relay stderr")?;
    let (tx, rx) = watch::channel(RelayEvents::default());
    let mut log = fs::File::create(log)?;
    // Reads the relay's JSON log: copies it to relay.log and counts the events we wait on.
    tokio::spawn(async move {
        use std::io::Write;
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(log, "{line}");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_owned();
            match field("message").as_str() {
                "relay listening" => {
                    if let (Ok(front), Ok(agents)) = (field("front").parse(), field("agents").parse()) {
                        tx.send_modify(|e| e.listening = Some((front, agents)));
                    }
                }
                ADMIN_LISTENING => {
                    if let Ok(admin) = field("admin").parse() {
                        tx.send_modify(|e| e.admin = Some(admin));
                    }
                }
                "agent registered" => tx.send_modify(|e| *e.registered.entry(field("cluster")).or_default() += 1),
                "agent gone" => tx.send_modify(|e| *e.gone.entry(field("cluster")).or_default() += 1),
                _ => {}
            }
        }
        tx.send_modify(|e| e.exited = true);
    });
    Ok((Proc::new(name.into(), child)?, rx))
}
