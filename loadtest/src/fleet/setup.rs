//! The fleet under test, set up from nothing in a temporary directory on 127.0.0.1: etcd (the
//! shared registry), a fleet CA and a peer certificate per relay, `relays` real `hawser relay`
//! processes sharing the issuer and assertion keys and the serving certificate, nginx in front
//! of them (TCP and UDP on one port, as docs/fleet.md runs it), the backend, and real `hawser
//! agent` processes. Every port is a free one the kernel picked; readiness is always a polled
//! condition with a deadline.

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::process::{Child, Command};

use super::registry::{self, PREFIX};
use crate::system::{self, ASSERTION_ISSUER, Proc, SUBJECT, spawn_agent};

/// The stream module Debian's `libnginx-mod-stream` installs.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// How to get nginx with its stream module.
const NGINX_INSTALL: &str = "install nginx with its stream module: `apt-get install nginx libnginx-mod-stream`";

/// What the set-up needs to know.
pub struct Options {
    /// The `hawser` binary.
    pub hawser: PathBuf,
    /// The etcd binary.
    pub etcd: PathBuf,
    /// The nginx binary.
    pub nginx: PathBuf,
    /// Relays.
    pub relays: usize,
    /// Loaded clusters (`fbench-0`, ...), one agent process each, dialling the balancer.
    pub clusters: usize,
    /// Swarm clusters configured (`swarm-00000`, ...).
    pub swarm_clusters: usize,
    /// The relays' `[drain] timeout_secs`, if not the default.
    pub drain_timeout_s: Option<u64>,
    /// The agents' `relay.transport`.
    pub transport: &'static str,
    /// Keep the working directory.
    pub keep: bool,
}

/// Loaded clusters' names start with this.
pub const BENCH: &str = "fbench-";
/// The cluster whose one agent holds one tunnel, on relay 0 only.
pub const HOP_CLUSTER: &str = "hop-0";
/// Swarm clusters' names start with this.
pub const SWARM: &str = "swarm-";

/// One relay of the fleet.
pub struct Relay {
    /// Its instance name, `relay-N`.
    pub name: String,
    /// Callers (TCP) and agents (QUIC over UDP, and TCP) on one port.
    pub front: SocketAddr,
    config: PathBuf,
    /// The running process (none between a stop and a start).
    pub process: Option<Proc>,
    starts: usize,
}

/// nginx, stopped with SIGTERM (it stops its workers) when dropped.
pub struct Nginx {
    child: Child,
    pid: u32,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // kill_on_drop ends the master; its workers end when they see it gone.
    }
}

/// The running fleet. Dropping it stops every process.
pub struct Fleet {
    /// The working directory (configs, keys, logs).
    pub dir: PathBuf,
    remove_dir: bool,
    hawser: PathBuf,
    /// The relays, `relay-0` first.
    pub relays: Vec<Relay>,
    /// nginx in front of them.
    pub nginx: Nginx,
    /// nginx's port, TCP and UDP.
    pub balancer: SocketAddr,
    /// etcd.
    pub etcd: Proc,
    /// etcd's client port.
    pub etcd_port: u16,
    /// The backend.
    pub backend: Proc,
    /// The CA callers and agents trust the relays' shared certificate with.
    pub relay_ca: PathBuf,
    /// The caller's bearer token.
    pub token: String,
    /// The swarm's agent token.
    pub agent_token: String,
    /// The loaded clusters' agents, by cluster.
    pub agents: Vec<Proc>,
    /// The loaded clusters.
    pub clusters: Vec<String>,
    /// The hop cluster's agent, until stopped.
    pub hop_agent: Option<Proc>,
    transport: &'static str,
}

impl Fleet {
    /// Sets everything up and waits until every relay is ready and every agent registered. If
    /// that fails, the working directory stays for its logs.
    pub async fn start(options: &Options) -> Result<Self> {
        check_prerequisites(options)?;
        let dir = tempfile::Builder::new()
            .prefix("hawser-loadtest-fleet-")
            .disable_cleanup(true)
            .tempdir()?
            .path()
            .to_owned();
        crate::say(&format!("fleet: working directory {}", dir.display()));
        Self::set_up(options, dir.clone())
            .await
            .with_context(|| format!("setting up the fleet (logs and configs kept in {})", dir.display()))
    }

    async fn set_up(options: &Options, dir: PathBuf) -> Result<Self> {
        // etcd.
        let (etcd, etcd_port) = start_etcd(&options.etcd, &dir).await?;
        crate::say(&format!("fleet: etcd on 127.0.0.1:{etcd_port}"));

        // The backend and its CA.
        let pki = crate::backend::generate_pki()?;
        fs::write(dir.join("backend-ca.crt"), &pki.ca_pem)?;
        fs::write(dir.join("backend.crt"), &pki.cert_pem)?;
        fs::write(dir.join("backend.key"), &pki.key_pem)?;
        let (backend, backend_addr) = system::spawn_backend(&dir).await?;

        // The fleet CA and a peer certificate per relay.
        fleet_pki(&dir, options.relays)?;

        // The relays' configs: one issuer, one assertion key and one serving certificate for the
        // whole fleet (relay-0 generates them; the others start once it is ready).
        let agent_token = system::random_hex(32)?;
        fs::write(dir.join("agent.token"), &agent_token)?;
        let digest = system::sha256_hex(agent_token.as_bytes());
        let clusters: Vec<String> = (0..options.clusters).map(|i| format!("{BENCH}{i}")).collect();
        let mut cluster_entries = String::new();
        let swarm = (0..options.swarm_clusters).map(crate::swarm::cluster);
        for cluster in clusters.iter().cloned().chain([HOP_CLUSTER.to_owned()]).chain(swarm) {
            cluster_entries.push_str(&format!(
                "\n[[clusters]]\nname = \"{cluster}\"\nagent_token_sha256 = \"{digest}\"\n"
            ));
        }
        let mut relays = Vec::new();
        for i in 0..options.relays {
            let front = free_tcp_and_udp_port()?;
            let peer = free_udp_port()?;
            let name = format!("relay-{i}");
            let config = dir.join(format!("{name}.toml"));
            let mut text = relay_config(&name, front, peer, etcd_port, &cluster_entries);
            if let Some(secs) = options.drain_timeout_s {
                text.push_str(&format!("\n[drain]\ntimeout_secs = {secs}\n"));
            }
            fs::write(&config, text)?;
            relays.push(Relay {
                name,
                front: ([127, 0, 0, 1], front).into(),
                config,
                process: None,
                starts: 0,
            });
        }

        // nginx in front of them.
        let (nginx, balancer) = start_nginx(&options.nginx, &dir, &relays).await?;
        crate::say(&format!("fleet: nginx on {balancer} (TCP and UDP)"));

        let relay_ca = dir.join("relay.crt");
        let mut fleet = Self {
            dir,
            remove_dir: false,
            hawser: options.hawser.clone(),
            relays,
            nginx,
            balancer,
            etcd,
            etcd_port,
            backend,
            relay_ca,
            token: String::new(),
            agent_token,
            agents: Vec::new(),
            clusters,
            hop_agent: None,
            transport: options.transport,
        };
        fleet.start_relay(0).await?;
        for i in 1..options.relays {
            fleet.start_relay(i).await?;
        }
        crate::say(&format!("fleet: {} relays ready", options.relays));

        // A caller token from the fleet's issuer.
        let out = Command::new(&options.hawser)
            .args(["token", "issue", "--config"])
            .arg(&fleet.relays[0].config)
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
        fleet.token = String::from_utf8(out.stdout)?.trim().to_owned();

        // The agents: the loaded clusters' through the balancer (two tunnels each, on distinct
        // relays, once a relay says it is one of a fleet); the hop cluster's on relay-0 alone.
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "backend", "cluster": {
                "server": format!("https://{backend_addr}"),
                "certificate-authority": fleet.dir.join("backend-ca.crt"),
            }}],
            "users": [{"name": "agent", "user": {"token": "loadtest-backend-token"}}],
            "contexts": [{"name": "backend", "context": {"cluster": "backend", "user": "agent"}}],
            "current-context": "backend",
        });
        fs::write(
            fleet.dir.join("backend.kubeconfig"),
            serde_json::to_vec_pretty(&kubeconfig)?,
        )?;
        for cluster in fleet.clusters.clone() {
            let agent = fleet.spawn_agent(&cluster, &format!("agent-{cluster}"), balancer, "")?;
            fleet.agents.push(agent);
        }
        let relay0 = fleet.relays[0].front;
        fleet.hop_agent = Some(fleet.spawn_agent(HOP_CLUSTER, "agent-hop-0", relay0, "connections = 1")?);

        // Registered: each loaded cluster on two relays, the hop cluster on relay-0 alone.
        let want = fleet.clusters.len();
        let two = options.relays.min(2);
        fleet
            .wait_registry("the agents to register", Duration::from_secs(60), |s| {
                s.registered(BENCH) == want
                    && fleet.clusters.iter().all(|c| s.holders(c).len() >= two)
                    && s.holders(HOP_CLUSTER).len() == 1
            })
            .await?;
        crate::say(&format!(
            "fleet: {want} loaded cluster(s) on {two} relays each, {HOP_CLUSTER} on relay-0"
        ));
        fleet.remove_dir = !options.keep;
        Ok(fleet)
    }

    /// Keeps the working directory after the run.
    pub fn keep_dir(&mut self) {
        self.remove_dir = false;
    }

    /// Starts relay `i` (again: same config, keys and ports) and waits until `/readyz` answers 200.
    pub async fn start_relay(&mut self, i: usize) -> Result<()> {
        self.spawn_relay(i)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.relay_ready(i).await? {
            if Instant::now() >= deadline {
                bail!(
                    "relay-{i} was not ready within 30s (its log: {})",
                    self.relay_log(i).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Starts relay `i` (again: same config, keys and ports) without waiting for it.
    pub fn spawn_relay(&mut self, i: usize) -> Result<()> {
        self.relays[i].starts += 1;
        let log = self.relay_log(i);
        let relay = &mut self.relays[i];
        let (process, _events) = system::spawn_relay_logging(&self.hawser, &relay.config, &log, &relay.name)?;
        relay.process = Some(process);
        Ok(())
    }

    /// Whether relay `i` answers `/readyz` with 200 now; fails if it exited.
    pub async fn relay_ready(&mut self, i: usize) -> Result<bool> {
        let log = self.relay_log(i);
        if let Some(p) = self.relays[i].process.as_mut() {
            p.ensure_running(&log)?;
        }
        Ok(readyz(self.relays[i].front, &self.relay_ca).await == Some(200))
    }

    /// The log of relay `i`'s latest start.
    fn relay_log(&self, i: usize) -> PathBuf {
        let relay = &self.relays[i];
        match relay.starts {
            0 | 1 => self.dir.join(format!("{}.log", relay.name)),
            n => self.dir.join(format!("{}.{n}.log", relay.name)),
        }
    }

    /// Sends SIGTERM to relay `i`, as a rollout does.
    pub async fn terminate_relay(&mut self, i: usize) -> Result<()> {
        let pid = self.relays[i].process.as_ref().context("relay not running")?.pid;
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Whether relay `i` has exited (after [`Fleet::terminate_relay`]); it is then forgotten.
    pub fn relay_exited(&mut self, i: usize) -> Result<bool> {
        let Some(p) = self.relays[i].process.as_mut() else {
            return Ok(true);
        };
        if p.child.try_wait()?.is_some() {
            self.relays[i].process = None;
            return Ok(true);
        }
        Ok(false)
    }

    /// Process ids of the running relays.
    pub fn relay_pids(&self) -> Vec<u32> {
        self.relays
            .iter()
            .map(|r| r.process.as_ref().map_or(0, |p| p.pid))
            .collect()
    }

    /// nginx's master and workers.
    pub fn nginx_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.nginx.pid];
        pids.extend(children(self.nginx.pid));
        pids
    }

    /// The registry now.
    pub async fn sessions(&self) -> Result<registry::Sessions> {
        registry::sessions(self.etcd_port).await
    }

    /// Polls the registry until `done`, or fails at the deadline.
    pub async fn wait_registry(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&registry::Sessions) -> bool,
    ) -> Result<registry::Sessions> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.sessions().await {
                Ok(s) if done(&s) => return Ok(s),
                Ok(s) => format!("{} session keys", s.keys),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!("timed out after {within:?} waiting for {what}; the registry: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts an agent of `cluster` named `instance` dialling `address` (a relay or the
    /// balancer), with `relay_extra` in its `[relay]` table.
    fn spawn_agent(&self, cluster: &str, instance: &str, address: SocketAddr, relay_extra: &str) -> Result<Proc> {
        let config = self.dir.join(format!("{instance}.toml"));
        fs::write(
            &config,
            format!(
                r#"instance = "{instance}"
cluster = "{cluster}"
token_file = "agent.token"
mode = "identity"

[relay]
address = "{address}"
transport = "{transport}"
server_name = "localhost"
ca_file = "relay.crt"
{relay_extra}

[apiserver]
kubeconfig = "backend.kubeconfig"

[assertions]
issuer = "{ASSERTION_ISSUER}"
jwks_url = "https://{address}/.well-known/hawser/assertion-jwks.json"
jwks_ca_file = "relay.crt"

[reconnect]
initial_backoff_ms = 100
max_backoff_ms = 2000

[audit]
output = "none"
"#,
                transport = self.transport,
            ),
        )?;
        spawn_agent(&self.hawser, &config, &self.dir, instance)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if self.remove_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The status `GET /readyz` answers at `addr`, none if it does not answer.
pub async fn readyz(addr: SocketAddr, ca: &Path) -> Option<u16> {
    if !ca.exists() {
        return None;
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(crate::tls::client_config(ca).ok()?));
    let ask = async {
        let mut sender = crate::client::open(&connector, addr).await.ok()?;
        let request = http::Request::get(format!("https://{addr}/readyz"))
            .body(Empty::<Bytes>::new())
            .ok()?;
        sender.ready().await.ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        Some(status)
    };
    tokio::time::timeout(Duration::from_secs(5), ask).await.ok().flatten()
}

fn check_prerequisites(options: &Options) -> Result<()> {
    if !options.etcd.is_file() {
        bail!(
            "the fleet scenario needs etcd, and there is none at {}: `cargo test` at the repository root builds \
             the test bed's (target/testbed/bin/etcd; it needs Go), or pass --etcd PATH",
            options.etcd.display()
        );
    }
    if !options.nginx.is_file() {
        bail!(
            "the fleet scenario needs nginx, and there is none at {}: {NGINX_INSTALL}, or pass --nginx PATH",
            options.nginx.display()
        );
    }
    if !Path::new(STREAM_MODULE).is_file() {
        bail!("the fleet scenario needs nginx's stream module ({STREAM_MODULE} is missing): {NGINX_INSTALL}");
    }
    if options.relays < 2 {
        bail!("--fleet-relays: at least 2");
    }
    Ok(())
}

fn relay_config(name: &str, front: u16, peer: u16, etcd_port: u16, clusters: &str) -> String {
    let settings = crate::system::relay_settings();
    format!(
        r#"instance = "{name}"
listen = "127.0.0.1:{front}"

{settings}
[registry]
kind = "etcd"
endpoints = ["http://127.0.0.1:{etcd_port}"]
prefix = "{PREFIX}"

[peers]
listen = "127.0.0.1:{peer}"
ca_file = "fleet-ca.crt"
cert_file = "{name}-peer.crt"
key_file = "{name}-peer.key"
{clusters}"#
    )
}

/// A fleet CA and a peer certificate for each relay, naming its instance (DNS), for serverAuth
/// and clientAuth.
fn fleet_pki(dir: &Path, relays: usize) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hawser-loadtest fleet CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    fs::write(dir.join("fleet-ca.crt"), ca_cert.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);
    for i in 0..relays {
        let name = format!("relay-{i}");
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.clone()])?;
        params.distinguished_name.push(DnType::CommonName, &name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer)?;
        fs::write(dir.join(format!("{name}-peer.crt")), cert.pem())?;
        fs::write(dir.join(format!("{name}-peer.key")), key.serialize_pem())?;
    }
    Ok(())
}

/// etcd as [`start_etcd_once`] starts it, again on other ports if one it was given was taken
/// before etcd bound it (a free port is free only until someone binds it; seen in CI).
async fn start_etcd(bin: &Path, dir: &Path) -> Result<(Proc, u16)> {
    let mut attempts = 1;
    loop {
        match start_etcd_once(bin, dir).await {
            Err(_)
                if attempts < 3
                    && fs::read_to_string(dir.join("etcd.log")).is_ok_and(|l| l.contains("address already in use")) =>
            {
                attempts += 1;
                let _ = fs::remove_dir_all(dir.join("etcd"));
            }
            started => return started,
        }
    }
}

/// etcd on two free ports, its data in `dir/etcd`, waited for until healthy.
async fn start_etcd_once(bin: &Path, dir: &Path) -> Result<(Proc, u16)> {
    let (client, peer) = (free_tcp_port()?, free_tcp_port()?);
    let log_path = dir.join("etcd.log");
    let log = fs::File::create(&log_path)?;
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .args([
            "--name=registry".to_owned(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=registry={peer_url}"),
            // A benchmark never survives a power cut; fsync would only slow it.
            "--unsafe-no-fsync".to_owned(),
            "--log-level=warn".to_owned(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut etcd = Proc::new("etcd".into(), child)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        etcd.ensure_running(&log_path)?;
        if registry::healthy(client).await {
            return Ok((etcd, client));
        }
        if Instant::now() >= deadline {
            bail!("etcd was not healthy within 60s; see {}", log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// nginx on a free port for TCP and UDP in front of every relay, waited for until it listens.
async fn start_nginx(bin: &Path, dir: &Path, relays: &[Relay]) -> Result<(Nginx, SocketAddr)> {
    let nginx_dir = dir.join("nginx");
    fs::create_dir_all(&nginx_dir)?;
    let port = free_tcp_and_udp_port()?;
    let config = nginx_dir.join("nginx.conf");
    fs::write(&config, nginx_config(&nginx_dir, port, relays))?;
    let error_log = nginx_dir.join("error.log");
    let child = Command::new(bin)
        .arg("-p")
        .arg(&nginx_dir)
        .arg("-c")
        .arg(&config)
        // Before it reads its config nginx logs to its built-in path.
        .arg("-e")
        .arg(&error_log)
        .stdin(Stdio::null())
        .stdout(fs::File::create(nginx_dir.join("nginx.out"))?)
        .stderr(fs::File::create(nginx_dir.join("nginx.err"))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("nginx exited at once")?;
    let mut nginx = Nginx { child, pid };
    // nginx writes its pid file once every listener is bound.
    let pid_file = nginx_dir.join("nginx.pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pid_file.exists() {
        if let Some(status) = nginx.child.try_wait()? {
            let log = fs::read_to_string(&error_log).unwrap_or_default();
            bail!("nginx exited ({status}); its error log:\n{log}");
        }
        if Instant::now() >= deadline {
            bail!("nginx did not listen within 20s; see {}", error_log.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((nginx, ([127, 0, 0, 1], port).into()))
}

/// As tests/e2e/support/nginx.rs and docs/fleet.md: TCP round robin, UDP hashed on the client's
/// address and port (a new agent socket lands on any relay, a flow stays on its relay),
/// `max_fails=0` (a restarting relay is skipped for one connection, not shut out).
fn nginx_config(dir: &Path, port: u16, relays: &[Relay]) -> String {
    let servers: String = relays
        .iter()
        .map(|r| format!("\n        server {} max_fails=0;", r.front))
        .collect();
    format!(
        "load_module {STREAM_MODULE};
daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{
    worker_connections 8192;
}}
stream {{
    upstream relays_tcp {{{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_pass relays_tcp;
        proxy_connect_timeout 2s;
        proxy_timeout 1h;
    }}
    upstream relays_udp {{
        hash $remote_addr$remote_port consistent;{servers}
    }}
    server {{
        listen 127.0.0.1:{port} udp reuseport;
        proxy_pass relays_udp;
        proxy_timeout 10m;
    }}
}}
",
        dir = dir.display()
    )
}

/// A port free for TCP now.
fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port free for UDP now.
fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port free for both TCP and UDP now.
fn free_tcp_and_udp_port() -> Result<u16> {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both TCP and UDP in 100 tries")
}

/// The children of process `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|s| {
                let (_, rest) = s.rsplit_once(')')?;
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            }) == Some(pid)
        })
        .collect()
}
