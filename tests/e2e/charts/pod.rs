//! Running the charts' relay and agent as processes with exactly the config the chart rendered:
//! the ConfigMap's and Secrets' keys become the files a pod mounts, and only what a pod would
//! supply is rewritten — the mount paths to those files, the listen addresses to free loopback
//! ports, and, for the agent, the in-cluster service account (absent here) to a kubeconfig with a
//! token TokenRequest issued for the chart's ServiceAccount.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::helm::Rendered;
use crate::support::Testbed;
use crate::support::binaries::binaries;
use crate::support::hawser::hawser_bin;
use crate::support::net::http;
use crate::support::process::{Supervised, wait_for};

/// How long a relay or agent may take to be ready.
const READY: Duration = Duration::from_secs(60);

/// Replaces each `from` in `text` by its `to`; fails if one does not occur, so that a change of
/// the chart's paths or addresses fails here rather than leaving a pod's path in place.
fn rewrite(text: &str, pairs: &[(String, String)]) -> Result<String> {
    let mut text = text.to_owned();
    for (from, to) in pairs {
        ensure!(
            text.contains(from.as_str()),
            "the rendered config has no {from:?}:\n{text}"
        );
        text = text.replace(from.as_str(), to);
    }
    Ok(text)
}

/// The Secret of kind-name `suffix` (e.g. `-tls`) among the rendered ones.
fn secret_dir(rendered: &Rendered, mounts: &Path, suffix: &str) -> Result<PathBuf> {
    let secret = rendered
        .all("Secret")
        .into_iter()
        .find_map(|s| s["metadata"]["name"].as_str().filter(|n| n.ends_with(suffix)))
        .with_context(|| format!("the chart rendered no Secret named *{suffix}"))?;
    Ok(mounts.join(secret))
}

/// A relay from the relay chart's rendering, listening on 127.0.0.1:`port` (TCP and UDP) with
/// its admin listener on `admin`.
pub struct Relay {
    _process: Supervised,
    /// Its config file as run (the rendered one, rewritten).
    pub config: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

/// Where a relay listens: its port (TCP and UDP) and its admin port, on 127.0.0.1.
#[derive(Clone, Copy)]
pub struct Ports {
    /// Callers' and agents' port.
    pub port: u16,
    /// The admin listener's.
    pub admin: u16,
}

impl Relay {
    /// Starts the relay of the rendered ConfigMap's `file` (e.g. `relay.toml`) in `dir`, with
    /// `more` rewrites besides the listeners and the mounts of the chart's Secrets, and waits until
    /// its admin listener's `/readyz` (the readiness probe's target) answers 200.
    pub fn start(dir: &Path, rendered: &Rendered, file: &str, ports: Ports, more: &[(String, String)]) -> Result<Self> {
        let Ports { port, admin } = ports;
        let mounts = dir.join("relay-mounts");
        rendered.write_mounts(&mounts)?;
        let mut pairs = vec![
            (
                "listen = \"0.0.0.0:8443\"".into(),
                format!("listen = \"127.0.0.1:{port}\""),
            ),
            (
                "listen = \"0.0.0.0:9090\"".into(),
                format!("listen = \"127.0.0.1:{admin}\""),
            ),
        ];
        // The chart's own Secrets, where it made them (a trial relay has none: it makes its
        // certificate and keys in /var/lib/hawser, which `more` then names).
        for (path, suffix) in [("/etc/hawser/tls/", "-tls"), ("/etc/hawser/keys/", "-keys")] {
            if let Ok(secret) = secret_dir(rendered, &mounts, suffix) {
                pairs.push((path.into(), format!("{}/", secret.display())));
            }
        }
        pairs.extend_from_slice(more);
        let text = rewrite(&rendered.config_file(file)?, &pairs)?;
        let stem = file.trim_end_matches(".toml");
        let config = dir.join(file);
        fs::write(&config, text)?;
        let log = dir.join(format!("{stem}.log"));
        let mut process = Supervised::spawn(
            &binaries()?.reaper,
            "hawser relay (chart)",
            &hawser_bin(),
            &["relay".into(), "--config".into(), config.display().to_string()],
            &log,
            false,
        )?;
        wait_for(
            &format!("the chart's relay {stem} to be ready (/readyz on its admin port)"),
            READY,
            || {
                process.ensure_running()?;
                Ok(matches!(http(admin, "GET", "/readyz", ""), Ok((200, _))).then_some(()))
            },
        )
        .with_context(|| format!("the relay's log: {}", log.display()))?;
        Ok(Self {
            _process: process,
            config,
            log,
        })
    }
}

/// An agent from the agent chart's rendering.
pub struct Agent {
    process: Supervised,
    /// Its log.
    pub log: PathBuf,
}

impl Agent {
    /// Starts it in `dir` (files named after `name`) as the chart's ServiceAccount `account` in
    /// `namespace` would run in a pod named `pod`, its admin listener on 127.0.0.1:`admin`.
    pub fn start(
        tb: &Testbed,
        dir: &Path,
        name: &str,
        rendered: &Rendered,
        (namespace, account, pod): (&str, &str, &str),
        admin: u16,
    ) -> Result<Self> {
        let mounts = dir.join(format!("{name}-mounts"));
        rendered.write_mounts(&mounts)?;
        // What the pod's service account mount would give it: a token TokenRequest issues.
        let token = tb
            .admin()
            .ok(&["create", "token", account, "-n", namespace, "--duration=1h"])?;
        let kubeconfig = tb.token_kubeconfig(&format!("{name}-{namespace}"), token.trim())?;
        let text = rewrite(
            &rendered.config_file("agent.toml")?,
            &[
                (
                    "/etc/hawser/config/".into(),
                    format!("{}/", mounts.join("config").display()),
                ),
                (
                    "/etc/hawser/token/token".into(),
                    secret_dir(rendered, &mounts, "-token")?
                        .join("token")
                        .display()
                        .to_string(),
                ),
                (
                    "listen = \"0.0.0.0:9090\"".into(),
                    format!("listen = \"127.0.0.1:{admin}\""),
                ),
            ],
        )? + &format!("\n[apiserver]\nkubeconfig = \"{}\"\n", kubeconfig.display());
        let config = dir.join(format!("{name}.toml"));
        fs::write(&config, text)?;
        let log = dir.join(format!("{name}.log"));
        let process = Supervised::spawn_with_env(
            &binaries()?.reaper,
            "hawser agent (chart)",
            &hawser_bin(),
            &["agent".into(), "--config".into(), config.display().to_string()],
            &log,
            // The agent's instance defaults to the pod's name.
            &[("HOSTNAME".into(), pod.into())],
        )?;
        Ok(Self { process, log })
    }

    /// Waits until its log has a line with every one of `texts`; returns that line.
    pub fn wait_for_line(&mut self, texts: &[&str]) -> Result<String> {
        let log = self.log.clone();
        wait_for(
            &format!("the agent to log a line with {texts:?}"),
            Duration::from_secs(30),
            || {
                let text = fs::read_to_string(&log).unwrap_or_default();
                if let Some(line) = text.lines().find(|l| texts.iter().all(|t| l.contains(t))) {
                    return Ok(Some(line.to_owned()));
                }
                self.process.ensure_running()?;
                Ok(None)
            },
        )
        .with_context(|| format!("the agent's log: {}", self.log.display()))
    }

    /// Its log so far.
    pub fn logged(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}
