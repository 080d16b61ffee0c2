//! A fleet of relays sharing a registry in a real etcd, peered with mutual TLS from a fleet CA,
//! and agents of several clusters (each a name for the test bed's one apiserver) dialling the
//! relay each test chooses.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use super::binaries::binaries;
use super::etcd::Etcd;
use super::hawser::hawser_bin;
use super::net::{free_port, free_tcp_and_udp_port, retry_if_port_taken};
use super::nginx::Balancer;
use super::process::{Supervised, run_with_deadline, wait_for};
use super::{Kubectl, Testbed};

/// Seconds a relay's registry entries outlive it.
pub const LEASE_TTL_SECS: u64 = 4;

/// One relay's ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Callers (TCP) and agents (QUIC and TCP).
    pub front: u16,
    /// The peer link (UDP).
    pub peer: u16,
    /// The admin listener (`/metrics`), in a fleet started with [`Fleet::start_with_admin`].
    pub admin: Option<u16>,
}

/// Relays, their etcd and their agents. Dropping it stops every process.
pub struct Fleet {
    agents: Mutex<Vec<(String, Supervised)>>,
    relays: Vec<Mutex<Option<Supervised>>>,
    /// Every relay's ports, by index (relay `i` is instance `relay-i`).
    pub ports: Vec<Ports>,
    /// The shared registry.
    pub etcd: Etcd,
    dir: TempDir,
    kubeconfig: PathBuf,
    files: std::sync::atomic::AtomicUsize,
}

impl Fleet {
    /// Starts etcd and `relays` relays that know `clusters`, and waits until each listens (all
    /// again on other ports if a port picked free was taken before a relay bound it).
    pub fn start(tb: &Testbed, relays: usize, clusters: &[&str]) -> Result<Self> {
        retry_if_port_taken("the fleet", || Self::start_once(tb, relays, clusters, false, ""))
    }

    /// Like [`Fleet::start`], each relay with an admin listener of its own (`Ports::admin`).
    pub fn start_with_admin(tb: &Testbed, relays: usize, clusters: &[&str]) -> Result<Self> {
        retry_if_port_taken("the fleet", || Self::start_once(tb, relays, clusters, true, ""))
    }

    /// Like [`Fleet::start`], with `tables` (e.g. `[telemetry]`) at the end of each relay's config.
    pub fn start_with_tables(tb: &Testbed, relays: usize, clusters: &[&str], tables: &str) -> Result<Self> {
        retry_if_port_taken("the fleet", || Self::start_once(tb, relays, clusters, false, tables))
    }

    fn start_once(tb: &Testbed, relays: usize, clusters: &[&str], admin: bool, tables: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hawser-fleet-")
            .disable_cleanup(std::env::var_os("HAWSER_E2E_KEEP").is_some())
            .tempdir()?;
        let etcd = Etcd::start()?;
        fleet_pki(dir.path(), relays)?;
        let ports: Vec<Ports> = (0..relays)
            .map(|_| {
                Ok(Ports {
                    // TCP for callers, UDP for QUIC agents.
                    front: free_tcp_and_udp_port()?,
                    peer: free_tcp_and_udp_port()?,
                    admin: admin.then(free_port).transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        let mut cluster_entries = String::new();
        for cluster in clusters {
            let digest = hawser::relay::token_digest_hex(&agent_token(cluster));
            fs::write(dir.path().join(format!("{cluster}.token")), agent_token(cluster))?;
            cluster_entries.push_str(&format!(
                "[[clusters]]\nname = \"{cluster}\"\nagent_token_sha256 = \"{digest}\"\n"
            ));
        }
        for (i, p) in ports.iter().enumerate() {
            // One issuer, one assertion key and one serving certificate for the whole fleet: a
            // caller or agent may land on any relay (relay-0 generates them; the others wait).
            fs::write(
                dir.path().join(format!("relay-{i}.toml")),
                format!(
                    r#"instance = "relay-{i}"
listen = "127.0.0.1:{front}"
[tls]
cert_file = "relay.crt"
key_file = "relay.key"
generate_self_signed = true
[issuer]
issuer = "https://fleet.e2e.invalid"
audience = "hawser"
signing_key_file = "issuer.key"
generate = true
[assertions]
issuer = "https://fleet.e2e.invalid/assertions"
signing_key_file = "assertion.key"
generate = true
[[access]]
clusters = ["*"]
users = ["hawser-admin"]
admin = true
{cluster_entries}
[limits]
open_stream_timeout_secs = 3
[audit]
output = "relay-{i}-audit.log"
[registry]
kind = "etcd"
endpoints = ["{etcd}"]
prefix = "/hawser-e2e"
lease_ttl_secs = {LEASE_TTL_SECS}
timeout_secs = 2
[peers]
listen = "127.0.0.1:{peer}"
ca_file = "fleet-ca.crt"
cert_file = "relay-{i}-peer.crt"
key_file = "relay-{i}-peer.key"
{admin}{tables}"#,
                    front = p.front,
                    peer = p.peer,
                    etcd = etcd.endpoint(),
                    admin = admin_table(p.admin),
                ),
            )?;
        }
        let fleet = Self {
            agents: Mutex::default(),
            relays: (0..relays).map(|_| Mutex::new(None)).collect(),
            ports,
            etcd,
            kubeconfig: agent_kubeconfig(tb, dir.path())?,
            dir,
            files: Default::default(),
        };
        for i in 0..relays {
            fleet.start_relay(i)?;
        }
        super::hawser::rbac::bind_admin(tb, "hawser-admin")?;
        Ok(fleet)
    }

    /// Starts relay `i` (again: same config, keys and ports) and waits until it is ready.
    pub fn start_relay(&self, i: usize) -> Result<()> {
        self.start_relay_until(i, "ready", |status| status == 200)
    }

    /// Starts relay `i` (again) and waits only until its `/readyz` answers, ready or not.
    pub fn start_relay_unready(&self, i: usize) -> Result<()> {
        self.start_relay_until(i, "answer /readyz", |_| true)
    }

    fn start_relay_until(&self, i: usize, what: &str, done: impl Fn(u16) -> bool) -> Result<()> {
        let config = self.dir.path().join(format!("relay-{i}.toml"));
        let mut relay = Supervised::spawn(
            &binaries()?.reaper,
            &format!("relay-{i}"),
            &hawser_bin(),
            &["relay".into(), "--config".into(), config.display().to_string()],
            &self.dir.path().join(format!("relay-{i}.log")),
            false,
        )?;
        let port = self.ports[i].front;
        wait_for(&format!("relay-{i} to {what}"), Duration::from_secs(30), || {
            relay.ensure_running()?;
            Ok(self.readyz(i)?.filter(|s| done(*s)).map(|_| ()))
        })?;
        *self.relays[i].lock().unwrap() = Some(relay);
        let _ = port;
        Ok(())
    }

    /// The status of relay `i`'s `/readyz`, `None` if it does not answer.
    pub fn readyz(&self, i: usize) -> Result<Option<u16>> {
        let ca = self.dir.path().join("relay.crt");
        if !ca.exists() || TcpStream::connect(("127.0.0.1", self.ports[i].front)).is_err() {
            return Ok(None);
        }
        let url = format!("https://127.0.0.1:{}/readyz", self.ports[i].front);
        Ok(super::https::get(&url, &ca, &[]).ok().map(|(status, _)| status))
    }

    /// Kills relay `i` with SIGKILL: it removes nothing from the registry.
    pub fn kill_relay(&self, i: usize) -> Result<()> {
        let relay = self.relays[i].lock().unwrap().take().context("relay not running")?;
        let pid = relay.program_pid()?;
        let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        drop(relay);
        Ok(())
    }

    /// Starts an agent of `cluster` named `instance` that dials relay `i`.
    pub fn start_agent(&self, cluster: &str, instance: &str, i: usize) -> Result<()> {
        self.start_agent_at(cluster, instance, &format!("127.0.0.1:{}", self.ports[i].front), "")
    }

    /// Starts an agent of `cluster` named `instance` that dials `address` (a relay or a
    /// balancer in front of them), with `relay_extra` in its `[relay]` table.
    pub fn start_agent_at(&self, cluster: &str, instance: &str, address: &str, relay_extra: &str) -> Result<()> {
        self.spawn_agent(cluster, instance, address, relay_extra, "")
    }

    /// Starts an agent of `cluster` named `instance` that dials relay `i`, with `relay_extra` in
    /// its `[relay]` table, `tables` after its own, and an admin listener (`/metrics`) on the
    /// port it returns.
    pub fn start_agent_with_admin(
        &self,
        cluster: &str,
        instance: &str,
        i: usize,
        relay_extra: &str,
        tables: &str,
    ) -> Result<u16> {
        let port = free_port()?;
        let address = format!("127.0.0.1:{}", self.ports[i].front);
        let tables = format!("{}{tables}", admin_table(Some(port)));
        self.spawn_agent(cluster, instance, &address, relay_extra, &tables)?;
        Ok(port)
    }

    /// Starts an agent of `cluster` named `instance` that dials relay `i`, with `tables` (e.g.
    /// `[telemetry]`) after its own.
    pub fn start_agent_with_tables(&self, cluster: &str, instance: &str, i: usize, tables: &str) -> Result<()> {
        let address = format!("127.0.0.1:{}", self.ports[i].front);
        self.spawn_agent(cluster, instance, &address, "", tables)
    }

    fn spawn_agent(&self, cluster: &str, instance: &str, address: &str, relay_extra: &str, tables: &str) -> Result<()> {
        let config = self.dir.path().join(format!("{instance}.toml"));
        fs::write(
            &config,
            format!(
                r#"instance = "{instance}"
cluster = "{cluster}"
token_file = "{cluster}.token"
[relay]
address = "{address}"
server_name = "localhost"
ca_file = "relay.crt"
{relay_extra}
[apiserver]
kubeconfig = "{kubeconfig}"
[assertions]
issuer = "https://fleet.e2e.invalid/assertions"
jwks_url = "https://{address}/.well-known/hawser/assertion-jwks.json"
jwks_ca_file = "relay.crt"
[reconnect]
initial_backoff_ms = 100
max_backoff_ms = 1000
[audit]
output = "none"
{tables}"#,
                kubeconfig = self.kubeconfig.display(),
            ),
        )?;
        let agent = Supervised::spawn(
            &binaries()?.reaper,
            instance,
            &hawser_bin(),
            &["agent".into(), "--config".into(), config.display().to_string()],
            &self.dir.path().join(format!("{instance}.log")),
            false,
        )?;
        self.agents.lock().unwrap().push((instance.to_owned(), agent));
        Ok(())
    }

    /// A file holding a token of the fleet's issuer for `subject` (the access rules name
    /// `hawser-admin` for every cluster and as admin, nobody else).
    pub fn token_file(&self, subject: &str) -> Result<PathBuf> {
        let n = self.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token_file = self.dir.path().join(format!("{n:03}-{subject}.token"));
        let mut cmd = Command::new(hawser_bin());
        cmd.args(["token", "issue", "--config"])
            .arg(self.dir.path().join("relay-0.toml"))
            .args(["--subject", subject, "--ttl", "1h"]);
        let out = run_with_deadline(cmd, None, Duration::from_secs(30))?;
        anyhow::ensure!(
            out.status.success(),
            "hawser token issue: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(&token_file, &out.stdout)?;
        Ok(token_file)
    }

    /// Relay `i`'s URL for callers.
    pub fn url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.ports[i].front)
    }

    /// The CA callers trust the relays' certificate with.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("relay.crt")
    }

    /// kubectl for `cluster` through relay `i`, as the administrator.
    pub fn kubectl(&self, i: usize, cluster: &str) -> Result<Kubectl> {
        self.kubectl_at(&self.url(i), cluster)
    }

    /// kubectl for `cluster` through `url` (a relay, or a balancer in front of them), as the
    /// administrator.
    pub fn kubectl_at(&self, url: &str, cluster: &str) -> Result<Kubectl> {
        let token_file = self.token_file("hawser-admin")?;
        let n = self.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cmd = Command::new(hawser_bin());
        cmd.args(["kubeconfig", "--relay", url, "--cluster", cluster, "--ca-file"])
            .arg(self.ca_file())
            .arg("--token-file")
            .arg(&token_file);
        let out = run_with_deadline(cmd, None, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!("hawser kubeconfig failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let path = self.dir.path().join(format!("{n:03}-{cluster}.kubeconfig"));
        fs::write(&path, &out.stdout)?;
        Ok(Kubectl::new(&binaries()?.kubectl, &path))
    }

    /// `hawser clusters` asked at `url` (a relay, or a balancer in front of them) with the token
    /// in `token` and `extra` arguments.
    pub fn clusters_at(&self, url: &str, token: &Path, extra: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(hawser_bin());
        cmd.args(["clusters", "--relay", url, "--ca-file"])
            .arg(self.ca_file())
            .arg("--token-file")
            .arg(token)
            .args(extra)
            .env_remove("HAWSER_TOKEN");
        run_with_deadline(cmd, None, Duration::from_secs(30))
    }

    /// nginx in front of every relay: TCP (callers, TCP agents) and UDP (QUIC agents) on one
    /// port, as a cloud balancer gives.
    pub fn balancer(&self) -> Result<Balancer> {
        let backends: Vec<SocketAddr> = self.ports.iter().map(|p| ([127, 0, 0, 1], p.front).into()).collect();
        Balancer::start(&backends, &backends)
    }

    /// The pid of relay `i`'s process.
    pub fn relay_pid(&self, i: usize) -> Result<u32> {
        self.relays[i]
            .lock()
            .unwrap()
            .as_ref()
            .context("relay not running")?
            .program_pid()
    }

    /// Stops relay `i` with SIGTERM, as a rollout does, and waits until it has drained and exited.
    pub fn terminate_relay(&self, i: usize) -> Result<()> {
        let relay = self.relays[i].lock().unwrap().take().context("relay not running")?;
        terminate(relay, &format!("relay-{i} to drain and exit"))
    }

    /// Stops agent `instance` with SIGTERM, as Kubernetes does, and waits until it has exited.
    pub fn terminate_agent(&self, instance: &str) -> Result<()> {
        let mut agents = self.agents.lock().unwrap();
        let at = agents
            .iter()
            .position(|(name, _)| name == instance)
            .context("no such agent")?;
        let (_, agent) = agents.swap_remove(at);
        drop(agents);
        terminate(agent, &format!("{instance} to exit"))
    }

    /// The log of `process` (`relay-i` or an agent's instance name).
    pub fn log(&self, process: &str) -> Result<String> {
        let path = self.dir.path().join(format!("{process}.log"));
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The lines of relay `i`'s audit log.
    pub fn audit(&self, i: usize) -> Result<Vec<serde_json::Value>> {
        let text = fs::read_to_string(self.dir.path().join(format!("relay-{i}-audit.log"))).unwrap_or_default();
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// The keys under the fleet's prefix in etcd, read with etcd's JSON gateway.
    pub fn registry_keys(&self) -> Result<Vec<String>> {
        self.etcd.keys("/hawser-e2e/")
    }
}

/// Sends `process` SIGTERM and waits (`what`) until it has exited.
fn terminate(mut process: Supervised, what: &str) -> Result<()> {
    let pid = process.program_pid()?;
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    wait_for(what, Duration::from_secs(30), || Ok(process.exited()))?;
    Ok(())
}

/// An `[admin]` table listening on `port`, or nothing.
fn admin_table(port: Option<u16>) -> String {
    port.map(|port| format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"))
        .unwrap_or_default()
}

fn agent_token(cluster: &str) -> String {
    format!("agent-token-of-{cluster}-{}", std::process::id())
}

/// The impersonating service account's kubeconfig (shared with the single-relay deployments).
fn agent_kubeconfig(tb: &Testbed, dir: &Path) -> Result<PathBuf> {
    super::hawser::rbac::agent_kubeconfig(tb, dir)
}

/// A fleet CA and a peer certificate for each relay, naming its instance.
fn fleet_pki(dir: &Path, relays: usize) -> Result<()> {
    let ca = ca("hawser-e2e-fleet-ca")?;
    fs::write(dir.join("fleet-ca.crt"), ca.pem())?;
    for i in 0..relays {
        let (cert, key) = peer_cert(&ca, &format!("relay-{i}"))?;
        fs::write(dir.join(format!("relay-{i}-peer.crt")), cert)?;
        fs::write(dir.join(format!("relay-{i}-peer.key")), key)?;
    }
    Ok(())
}

/// A self-signed CA.
pub fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A peer certificate (PEM) and key for relay `instance`, signed by `ca`.
pub fn peer_cert(ca: &CertifiedIssuer<'static, KeyPair>, instance: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![instance.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, instance);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}
