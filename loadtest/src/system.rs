//! The system under test, set up from nothing in a temporary directory on
//! 127.0.0.1: the backend (a child process of this driver), a real `hawser
//! relay` and real `hawser agent` processes. Every port is picked by the
//! kernel (port 0) and learnt from the process itself: the backend prints
//! its address, the relay logs its listening line (JSON logs on stderr).
//! Readiness is always a polled condition with a deadline.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

use crate::client::Target;

mod agent;
mod relay;

pub(crate) use relay::{ADMIN_LISTENING, RelayEvents, spawn_relay, spawn_relay_logging};

/// `iss` and `aud` of the relay's built-in issuer in this set-up.
pub(crate) const ISSUER: &str = "https://hawser-loadtest.invalid";
/// The `iss` of the relay's assertions, which agents (the swarm's too) name in their hello.
pub const ASSERTION_ISSUER: &str = "https://hawser-loadtest.invalid/assertions";
pub(crate) const AUDIENCE: &str = "hawser-loadtest";
/// The caller's username, the only one the access rule admits.
pub const SUBJECT: &str = "loadtest";

/// What the set-up needs to know.
pub struct Options {
    /// The `hawser` binary.
    pub hawser: PathBuf,
    /// Clusters served under load (`bench-0`, `bench-1`, ...).
    pub clusters: usize,
    /// Agents per loaded cluster (distinct instances).
    pub agents_per_cluster: usize,
    /// Clusters configured for idle agents (`idle-0000`, ...), one agent each.
    pub idle_agents: usize,
    /// Clusters configured for swarm agents (`swarm-00000`, ...), one tunnel each.
    pub swarm_clusters: usize,
    /// Keep the temporary directory.
    pub keep: bool,
    /// The agents' `relay.transport`.
    pub transport: &'static str,
    /// TOML added to the relay's and every agent's configuration (the `telemetry` scenario's
    /// `[telemetry]` and `[admin]`); empty for the others.
    pub extra_toml: String,
    /// The working directory, made here; `None`: a new temporary directory.
    pub dir: Option<PathBuf>,
}

/// A child process, killed when dropped.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    pub(crate) child: Child,
    /// Its process id.
    pub pid: u32,
    /// The backend's lifeline; unused for hawser processes.
    _stdin: Option<ChildStdin>,
}

impl Proc {
    pub(crate) fn new(name: String, mut child: Child) -> Result<Self> {
        let pid = child.id().with_context(|| format!("{name} exited at once"))?;
        let stdin = child.stdin.take();
        Ok(Self {
            name,
            child,
            pid,
            _stdin: stdin,
        })
    }

    pub(crate) fn ensure_running(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); see {}", self.name, log.display());
        }
        Ok(())
    }
}

/// The running system.
pub struct System {
    /// The working directory (configs, keys, logs).
    pub dir: PathBuf,
    /// Remove `dir` when dropped (not with --keep, nor after a failure).
    remove_dir: bool,
    pub(crate) hawser: PathBuf,
    /// The backend process.
    pub backend: Proc,
    /// The backend's address.
    pub backend_addr: SocketAddr,
    /// The backend's CA certificate.
    pub backend_ca: PathBuf,
    /// The relay process.
    pub relay: Proc,
    /// The relay's HTTPS front door.
    pub relay_front: SocketAddr,
    /// The relay's QUIC listener (agents dial it).
    pub relay_udp: SocketAddr,
    /// The relay's self-signed certificate, to trust.
    pub relay_ca: PathBuf,
    pub(crate) events: watch::Receiver<RelayEvents>,
    /// Agents of the loaded clusters.
    pub agents: Vec<Proc>,
    /// Their instance names, in the same order.
    agent_instances: Vec<String>,
    /// The loaded clusters.
    pub clusters: Vec<String>,
    /// The caller's bearer token.
    pub token: String,
    /// Clusters for idle agents.
    pub idle_clusters: Vec<String>,
    /// The agents' `relay.transport`.
    pub transport: &'static str,
    /// Added to every agent's configuration.
    extra_toml: String,
}

impl System {
    /// Sets everything up and waits until the relay has registered every loaded cluster's agents
    /// (whether they answer is [`System::wait_answering`]'s to check). If that fails, the working
    /// directory stays for its logs.
    pub async fn start(options: &Options) -> Result<Self> {
        let dir = match &options.dir {
            Some(dir) => {
                fs::create_dir_all(dir)?;
                dir.clone()
            }
            None => tempfile::Builder::new()
                .prefix("hawser-loadtest-")
                .disable_cleanup(true)
                .tempdir()?
                .path()
                .to_owned(),
        };
        crate::say(&format!("working directory {}", dir.display()));
        Self::set_up(options, dir.clone())
            .await
            .with_context(|| format!("setting up (logs and configs kept in {})", dir.display()))
    }

    async fn set_up(options: &Options, dir: PathBuf) -> Result<Self> {
        // The backend and its CA.
        let pki = crate::backend::generate_pki()?;
        let backend_ca = dir.join("backend-ca.crt");
        fs::write(&backend_ca, &pki.ca_pem)?;
        fs::write(dir.join("backend.crt"), &pki.cert_pem)?;
        fs::write(dir.join("backend.key"), &pki.key_pem)?;
        let (backend, backend_addr) = spawn_backend(&dir).await?;
        crate::say(&format!("backend listening on {backend_addr}"));

        // The relay: clusters, an access rule for the driver's caller, no throttling.
        let agent_token = random_hex(32)?;
        fs::write(dir.join("agent.token"), &agent_token)?;
        let digest = sha256_hex(agent_token.as_bytes());
        let clusters: Vec<String> = (0..options.clusters).map(|i| format!("bench-{i}")).collect();
        let idle_clusters: Vec<String> = (0..options.idle_agents).map(|i| format!("idle-{i:05}")).collect();
        let (settings, extra) = (relay_settings(), &options.extra_toml);
        let mut relay_toml = format!(
            r#"instance = "relay-loadtest"
listen = "127.0.0.1:0"
agent_listen = "127.0.0.1:0"

{settings}
{extra}"#
        );
        let swarm_clusters = (0..options.swarm_clusters).map(crate::swarm::cluster);
        for cluster in clusters.iter().chain(&idle_clusters).cloned().chain(swarm_clusters) {
            relay_toml.push_str(&format!(
                "\n[[clusters]]\nname = \"{cluster}\"\nagent_token_sha256 = \"{digest}\"\n"
            ));
        }
        let relay_config = dir.join("relay.toml");
        fs::write(&relay_config, relay_toml)?;
        let (relay, events) = spawn_relay(&options.hawser, &dir, &relay_config)?;
        let mut system_events = events.clone();
        let listening = tokio::time::timeout(
            Duration::from_secs(30),
            system_events.wait_for(|e| e.listening.is_some() || e.exited()),
        )
        .await
        .context("the relay did not log its listening line within 30s")?
        .map_err(|_| anyhow::anyhow!("relay log reader stopped"))?
        .clone();
        let Some((relay_front, relay_udp)) = listening.listening else {
            bail!("the relay exited at start; see {}", dir.join("relay.log").display());
        };
        crate::say(&format!(
            "relay listening on {relay_front} (HTTPS) and {relay_udp} (QUIC)"
        ));

        // A caller token from the relay's built-in issuer, as a user gets one.
        let out = Command::new(&options.hawser)
            .args(["token", "issue", "--config"])
            .arg(&relay_config)
            .args(["--subject", SUBJECT, "--ttl", "1h"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running hawser token issue")?;
        if !out.status.success() {
            bail!(
                "hawser token issue failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let token = String::from_utf8(out.stdout)?.trim().to_owned();

        // The agents' kubeconfig: the backend, its CA, a static token.
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "backend", "cluster": {
                "server": format!("https://{backend_addr}"),
                "certificate-authority": backend_ca,
            }}],
            "users": [{"name": "agent", "user": {"token": "loadtest-backend-token"}}],
            "contexts": [{"name": "backend", "context": {"cluster": "backend", "user": "agent"}}],
            "current-context": "backend",
        });
        fs::write(dir.join("backend.kubeconfig"), serde_json::to_vec_pretty(&kubeconfig)?)?;

        let relay_ca = dir.join("relay.crt");
        let mut system = Self {
            dir,
            // Until every agent is up, a failure keeps the directory (its logs say why).
            remove_dir: false,
            hawser: options.hawser.clone(),
            backend,
            backend_addr,
            backend_ca,
            relay,
            relay_front,
            relay_udp,
            relay_ca,
            events,
            agents: Vec::new(),
            agent_instances: Vec::new(),
            clusters,
            token,
            idle_clusters,
            transport: options.transport,
            extra_toml: options.extra_toml.clone(),
        };
        for cluster in system.clusters.clone() {
            for i in 0..options.agents_per_cluster {
                let instance = format!("agent-{cluster}-{i}");
                let agent = system.spawn_agent(&cluster, &instance)?;
                system.agents.push(agent);
                system.agent_instances.push(instance);
            }
        }
        let want = system.clusters.len() * options.agents_per_cluster;
        system
            .wait_events("the agents to register", Duration::from_secs(60), |e| {
                e.connected("bench-") >= want
            })
            .await?;
        crate::say(&format!("{want} agent(s) registered at the relay"));
        system.remove_dir = !options.keep;
        Ok(system)
    }

    /// Keeps the working directory after the run (on failure, for its logs).
    pub fn keep_dir(&mut self) {
        self.remove_dir = false;
    }

    /// The callers' view of the relay.
    pub async fn hawser_target(&self, connections: usize, timeout: Duration) -> Result<Arc<Target>> {
        self.hawser_target_named("hawser", connections, timeout).await
    }

    /// The callers' view of the relay, named `name` in progress lines and messages.
    pub async fn hawser_target_named(
        &self,
        name: &'static str,
        connections: usize,
        timeout: Duration,
    ) -> Result<Arc<Target>> {
        let bases = self
            .clusters
            .iter()
            .map(|c| format!("https://{}/clusters/{c}", self.relay_front))
            .collect();
        Target::connect(
            name,
            self.relay_front,
            &self.relay_ca,
            connections,
            bases,
            Some(&self.token),
            timeout,
        )
        .await
    }

    /// The callers' view of the backend, without Hawser.
    pub async fn direct_target(&self, connections: usize, timeout: Duration) -> Result<Arc<Target>> {
        let bases = vec![format!("https://{}", self.backend_addr)];
        Target::connect(
            "direct",
            self.backend_addr,
            &self.backend_ca,
            connections,
            bases,
            None,
            timeout,
        )
        .await
    }

    /// Polls GET /small on every cluster of `target` until each answers 200.
    pub async fn wait_answering(&mut self, target: &Target) -> Result<()> {
        let (relay, log) = (&mut self.relay, self.dir.join("relay.log"));
        wait_answering(target, || relay.ensure_running(&log)).await
    }

    /// Waits until the relay's log satisfies `done`, or fails at the deadline or if the relay exits.
    pub async fn wait_events(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&RelayEvents) -> bool,
    ) -> Result<RelayEvents> {
        let mut rx = self.events.clone();
        let events = tokio::time::timeout(within, rx.wait_for(|e| e.exited() || done(e)))
            .await
            .with_context(|| format!("timed out after {within:?} waiting for {what}"))?
            .map_err(|_| anyhow::anyhow!("relay log reader stopped"))?
            .clone();
        if events.exited() && !done(&events) {
            bail!("the relay exited; see {}", self.dir.join("relay.log").display());
        }
        Ok(events)
    }

    /// The relay's log so far, as counted events.
    pub fn events(&self) -> RelayEvents {
        self.events.borrow().clone()
    }

    /// Stops the relay and the loaded clusters' agents as [`stop`] does (the backend stays);
    /// whether all exited by themselves within `within`.
    pub async fn stop_relay_and_agents(&mut self, within: Duration) -> Result<bool> {
        let mut procs: Vec<&mut Proc> = self.agents.iter_mut().chain([&mut self.relay]).collect();
        terminate(&mut procs, within).await
    }

    /// Process ids of the loaded clusters' agents.
    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().map(|a| a.pid).collect()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        // The processes (fields) are killed right after this.
        if self.remove_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Stops processes with SIGTERM (a graceful close of their tunnels), then
/// SIGKILL for any still running after `within`; whether all exited by themselves.
pub async fn stop(mut procs: Vec<Proc>, within: Duration) -> Result<bool> {
    terminate(&mut procs.iter_mut().collect::<Vec<_>>(), within).await
}

/// [`stop`] for processes still owned elsewhere.
pub async fn terminate(procs: &mut [&mut Proc], within: Duration) -> Result<bool> {
    if procs.is_empty() {
        return Ok(true);
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .args(procs.iter().map(|p| p.pid.to_string()))
        .stdin(Stdio::null())
        .status()
        .await
        .context("running kill")?;
    if !status.success() {
        crate::say("kill -TERM reported an error; killing the rest");
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut all = true;
    for p in procs.iter_mut() {
        if tokio::time::timeout_at(deadline, p.child.wait()).await.is_err() {
            all = false;
            let _ = p.child.start_kill();
        }
    }
    Ok(all)
}

/// Polls `GET /small` on every cluster of `target` until each answers 200, within 30 s; `alive`
/// fails at once if what should answer has died.
pub async fn wait_answering(target: &Target, mut alive: impl FnMut() -> Result<()>) -> Result<()> {
    let within = Duration::from_secs(30);
    let deadline = Instant::now() + within;
    for i in 0..target.clusters() {
        let uri = target.uri(i, "/small")?;
        loop {
            let last = match tokio::time::timeout(Duration::from_secs(5), target.get(uri.clone())).await {
                Ok(Ok(a)) if a.status == http::StatusCode::OK => break,
                Ok(Ok(a)) => format!("status {}", a.status),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "no answer within 5s".to_owned(),
            };
            alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "{uri} ({}) did not answer 200 within {within:?}; last: {last}",
                    target.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// What every relay the driver starts shares: its TLS, issuer, assertions, the driver's caller's
/// access rule, no audit and no throttling.
pub(crate) fn relay_settings() -> String {
    format!(
        r#"[tls]
cert_file = "relay.crt"
key_file = "relay.key"
generate_self_signed = true
self_signed_names = ["localhost", "127.0.0.1"]

[issuer]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
signing_key_file = "issuer.key"
generate = true

[assertions]
issuer = "{ASSERTION_ISSUER}"
signing_key_file = "assertion.key"
generate = true

[[access]]
clusters = ["*"]
users = ["{SUBJECT}"]

[audit]
output = "none"

[limits]
max_streams_per_caller = 0
auth_failures_per_minute = 0
"#
    )
}

pub(crate) async fn spawn_backend(dir: &Path) -> Result<(Proc, SocketAddr)> {
    let exe = std::env::current_exe().context("finding this driver's binary")?;
    let mut child = Command::new(exe)
        .arg("serve-backend")
        .arg("--cert")
        .arg(dir.join("backend.crt"))
        .arg("--key")
        .arg(dir.join("backend.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(dir.join("backend.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("starting the backend")?;
    let stdout = child.stdout.take().context("backend stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("the backend did not start within 10s")??
        .with_context(|| format!("the backend exited; see {}", dir.join("backend.log").display()))?;
    let addr = line
        .strip_prefix("listening ")
        .with_context(|| format!("unexpected backend line {line:?}"))?
        .parse()?;
    Ok((Proc::new("backend".into(), child)?, addr))
}

pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(hex(&buf))
}

/// Hex SHA-256, as the relay's `agent_token_sha256` wants it.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `VmRSS` and `RssAnon` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
}

/// Starts `hawser agent` with `config`, its log in `dir/INSTANCE.log`.
pub fn spawn_agent(hawser: &Path, config: &Path, dir: &Path, instance: &str) -> Result<Proc> {
    let log = fs::File::create(dir.join(format!("{instance}.log")))?;
    let child = Command::new(hawser)
        .args(["--log-format", "json", "agent", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting hawser agent")?;
    Proc::new(format!("agent {instance}"), child)
}
