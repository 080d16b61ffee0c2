//! A Hawser deployment in front of the test bed: the built `hawser` binary
//! runs a relay and an agent (real TLS, real QUIC) on free loopback ports,
//! the agent reaching kube-apiserver with a service account (or the test
//! bed's `system:monitoring` user) allowed to impersonate. Callers get tokens
//! from the relay's built-in issuer.

use std::ffi::OsStr;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

pub mod rbac;
mod trust;

pub use rbac::AgentCredential;
use rbac::{agent_kubeconfig_as, bind_admin};
pub use trust::{EXTERNAL_ISSUER, Trust, agent_callers, cluster_audience};
use trust::{audience_line, relay_callers};

use super::binaries::binaries;
use super::net::free_port;
use super::process::{Background, Supervised, run_with_deadline, wait_for};
use super::{Kubectl, Testbed};

/// Name of the test bed's cluster on the relay.
pub const CLUSTER: &str = "testbed";

/// The path of the `hawser` binary under test.
pub fn hawser_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hawser"))
}

/// Extra TOML for a deployment's configs.
#[derive(Default, Clone, Copy)]
pub struct Extra<'a> {
    /// Tables for both configs (typically `[tunnel]`).
    pub tunnel: &'a str,
    /// Tables for the relay's config (e.g. `[limits]`).
    pub relay: &'a str,
    /// Top-level keys, then tables, for the agent's config.
    pub agent: &'a str,
    /// How the agent learns who the caller is.
    pub trust: Trust,
    /// The agent's `[relay]` keys besides its trust (`{port}` is the relay's port); empty: QUIC
    /// on the relay's port, with the default transport.
    pub agent_relay: &'a str,
    /// Environment variables of the agent process.
    pub agent_env: &'a [(&'a str, &'a str)],
    /// The relay's port (TCP and UDP), when something must know it first (a balancer); none: a
    /// free one.
    pub relay_port: Option<u16>,
    /// Who the agent is to kube-apiserver.
    pub agent_credential: AgentCredential,
    /// Username and group prefix of the test's own callers' issuer, for a deployment that trusts
    /// further issuers (`relay` tables); access rules and the admin binding follow it.
    pub caller_prefix: &'a str,
}

/// A relay and an agent serving the test bed. Dropping it stops both.
pub struct Hawser {
    agent: Mutex<Option<Supervised>>,
    relay: Mutex<Option<Supervised>>,
    dir: TempDir,
    /// `https://127.0.0.1:PORT` of the relay's front door.
    pub relay_url: String,
    /// The relay's (self-signed) certificate, to trust.
    pub relay_ca: PathBuf,
    relay_config: PathBuf,
    agent_config: PathBuf,
    /// Numbers the files tests write, so parallel tests never share one.
    files: std::sync::atomic::AtomicUsize,
    trust: Trust,
    agent_env: Vec<(String, String)>,
}

impl Hawser {
    /// Starts a relay and an agent for the test bed and waits until the
    /// cluster answers through them.
    pub fn start(tb: &Testbed) -> Result<Self> {
        Self::start_with(tb, &Extra::default())
    }

    /// Like [`Hawser::start`], relay and agent both exporting to the test bed's collector with
    /// `[telemetry]` keys `keys` besides its endpoint, the agent authenticating with `credential`
    /// (which decides whether kube-apiserver's spans join the agent's trace).
    pub fn start_exporting(tb: &Testbed, keys: &str, credential: AgentCredential) -> Result<Self> {
        let telemetry = format!(
            "[telemetry]\notlp_endpoint = \"http://{}\"\n{keys}",
            tb.collector().otlp_grpc_endpoint()
        );
        Self::start_with(
            tb,
            &Extra {
                relay: &telemetry,
                agent: &telemetry,
                agent_credential: credential,
                ..Extra::default()
            },
        )
    }

    /// Like [`Hawser::start`], with extra configuration.
    pub fn start_with(tb: &Testbed, extra: &Extra) -> Result<Self> {
        let Extra {
            tunnel,
            relay: relay_extra,
            agent: agent_top,
            trust,
            agent_relay,
            agent_env,
            relay_port,
            agent_credential,
            caller_prefix: p,
        } = *extra;
        let dir = tempfile::Builder::new()
            .prefix("hawser-system-")
            .disable_cleanup(std::env::var_os("HAWSER_E2E_KEEP").is_some())
            .tempdir()?;
        let port = relay_port.map_or_else(free_port, Ok)?;
        let relay_url = format!("https://127.0.0.1:{port}");
        let agent_token = format!("agent-token-{port}-{}", std::process::id());
        let digest = hawser::relay::token_digest_hex(&agent_token);
        fs::write(dir.path().join("agent-token"), &agent_token)?;

        let relay_config = dir.path().join("relay.toml");
        fs::write(
            &relay_config,
            format!(
                r#"instance = "relay-e2e"
listen = "127.0.0.1:{port}"
[tls]
cert_file = "relay.crt"
key_file = "relay.key"
generate_self_signed = true
{callers}[[access]]
clusters = ["{CLUSTER}"]
groups = ["{p}dev"]
[[access]]
clusters = ["*"]
users = ["{p}hawser-admin"]
[[clusters]]
name = "{CLUSTER}"
agent_token_sha256 = "{digest}"
{testbed_audience}
[[clusters]]
name = "elsewhere"
agent_token_sha256 = "{other}"
{elsewhere_audience}
[audit]
output = "relay-audit.log"
{relay_extra}
{tunnel}
"#,
                other = hawser::relay::token_digest_hex("elsewhere-token"),
                callers = relay_callers(trust, &relay_url, dir.path(), p)?,
                testbed_audience = audience_line(trust, CLUSTER),
                elsewhere_audience = audience_line(trust, "elsewhere"),
            ),
        )?;
        let mut relay = spawn_relay(&relay_config, dir.path())?;
        let relay_ca = dir.path().join("relay.crt");
        wait_for("the relay to listen", Duration::from_secs(30), || {
            relay.ensure_running()?;
            Ok((relay_ca.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok()).then_some(()))
        })?;

        let agent_kubeconfig = agent_kubeconfig_as(tb, dir.path(), agent_credential)?;
        let agent_config = dir.path().join("agent.toml");
        fs::write(
            &agent_config,
            format!(
                r#"instance = "agent-e2e"
cluster = "{CLUSTER}"
token_file = "agent-token"
{agent_top}
[relay]
{relay_where}
server_name = "localhost"
ca_file = "relay.crt"
[apiserver]
kubeconfig = "{kubeconfig}"
{callers}
[reconnect]
initial_backoff_ms = 100
max_backoff_ms = 2000
[audit]
output = "agent-audit.log"
{tunnel}
"#,
                kubeconfig = agent_kubeconfig.display(),
                callers = agent_callers(trust, &relay_url, CLUSTER, p),
                relay_where = if agent_relay.is_empty() {
                    format!("address = \"127.0.0.1:{port}\"")
                } else {
                    agent_relay.replace("{port}", &port.to_string())
                },
            ),
        )?;
        let hawser = Self {
            agent: Mutex::new(None),
            relay: Mutex::new(Some(relay)),
            dir,
            relay_url,
            relay_ca,
            relay_config,
            agent_config,
            files: Default::default(),
            trust,
            agent_env: agent_env.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect(),
        };
        hawser.start_agent()?;

        // Callers: an administrator everywhere; members of `dev` get their own bindings.
        bind_admin(tb, &format!("{p}hawser-admin"))?;
        let admin = hawser.kubeconfig_route("hawser-admin", &[])?;
        wait_for(
            "the cluster to answer through the relay",
            Duration::from_secs(60),
            || Ok(admin.run(&["get", "--raw=/version"])?.status.success().then_some(())),
        )?;
        Ok(hawser)
    }

    /// (Re)starts the agent process.
    pub fn start_agent(&self) -> Result<()> {
        let bins = binaries()?;
        let agent = Supervised::spawn_with_env(
            &bins.reaper,
            "hawser agent",
            &hawser_bin(),
            &[
                "agent".into(),
                "--config".into(),
                self.agent_config.display().to_string(),
            ],
            &self.dir.path().join("agent.log"),
            &self.agent_env,
        )?;
        *self.agent.lock().unwrap() = Some(agent);
        Ok(())
    }

    /// Fails unless the agent's log has a line containing `text` (it logs as it starts).
    pub fn expect_agent_log(&self, text: &str) -> Result<()> {
        if !self.agent_logged(text)? {
            bail!(
                "the agent's log ({}) has no line with {text:?}",
                self.dir.path().join("agent.log").display()
            );
        }
        Ok(())
    }

    /// Whether the agent's log has a line containing `text`.
    pub fn agent_logged(&self, text: &str) -> Result<bool> {
        let log = fs::read_to_string(self.dir.path().join("agent.log"))?;
        Ok(log.lines().any(|l| l.contains(text)))
    }

    /// The port of the relay's front door.
    pub fn relay_port(&self) -> u16 {
        self.relay_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Starts an agent process with `config`, logging to NAME.log.
    pub fn spawn_agent(&self, name: &str, config: &Path) -> Result<Supervised> {
        Supervised::spawn(
            &binaries()?.reaper,
            "hawser agent",
            &hawser_bin(),
            &["agent".into(), "--config".into(), config.display().to_string()],
            &self.dir.path().join(format!("{name}.log")),
            false,
        )
    }

    /// Stops the relay process.
    pub fn stop_relay(&self) {
        drop(self.relay.lock().unwrap().take());
    }

    /// Kills the relay with SIGKILL, as a crash would: it closes no tunnel.
    pub fn kill_relay(&self) -> Result<()> {
        let pid = self.relay_pid()?;
        let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        self.stop_relay();
        Ok(())
    }

    /// Starts the relay again with the same configuration, keys and ports.
    pub fn start_relay(&self) -> Result<()> {
        let relay = spawn_relay(&self.relay_config, self.dir.path())?;
        *self.relay.lock().unwrap() = Some(relay);
        Ok(())
    }

    /// Kills the agent with SIGKILL, as a crash or a lost node would: it
    /// closes nothing, and the relay can only notice by the idle timeout.
    pub fn crash_agent(&self) -> Result<()> {
        let config = self.agent_config.display().to_string();
        let status = Command::new("pkill")
            .args(["-KILL", "-f", &format!("hawser agent --config {config}$")])
            .status()?;
        anyhow::ensure!(status.success(), "no agent process to kill");
        self.stop_agent();
        Ok(())
    }

    /// Freezes (`true`, SIGSTOP) or thaws (SIGCONT) the agent process: alive to the kernel, whose
    /// TCP stack still acknowledges, but answering nothing.
    pub fn freeze_agent(&self, frozen: bool) -> Result<()> {
        let config = self.agent_config.display().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("pkill")
            .args([signal, "-f", &format!("hawser agent --config {config}$")])
            .status()?;
        anyhow::ensure!(status.success(), "no agent process to signal");
        Ok(())
    }

    /// Stops the agent process (its reaper kills it).
    pub fn stop_agent(&self) {
        drop(self.agent.lock().unwrap().take());
    }

    /// A path in the deployment's directory that no other call returns.
    pub fn unique_path(&self, name: &str) -> PathBuf {
        let n = self.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.path().join(format!("{n:03}-{name}"))
    }

    /// A caller's token for this deployment's cluster: from the relay's built-in issuer, or in a
    /// [`Trust::CallerTokens`] deployment from the external issuer, for the cluster's audience.
    pub fn issue_token(&self, subject: &str, groups: &[&str]) -> Result<String> {
        match self.trust {
            Trust::Assertions => self.issue_token_for(subject, groups, &[]),
            Trust::CallerTokens => self.issue_token_for(subject, groups, &[&cluster_audience(CLUSTER)]),
        }
    }

    /// A caller's token with these audiences (none: the issuer's own).
    pub fn issue_token_for(&self, subject: &str, groups: &[&str], audiences: &[&str]) -> Result<String> {
        let mut cmd = Command::new(hawser_bin());
        cmd.args(["token", "issue"]);
        match self.trust {
            Trust::Assertions => cmd.arg("--config").arg(&self.relay_config),
            Trust::CallerTokens => cmd
                .arg("--signing-key")
                .arg(self.dir.path().join("external.key"))
                .args(["--issuer", EXTERNAL_ISSUER]),
        };
        cmd.args(["--subject", subject, "--ttl", "1h"]);
        for group in groups {
            cmd.args(["--group", group]);
        }
        for audience in audiences {
            cmd.args(["--audience", audience]);
        }
        let out = run_with_deadline(cmd, None, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!("hawser token issue failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// The agent's configuration file.
    pub fn agent_config(&self) -> &Path {
        &self.agent_config
    }

    /// Rewrites the relay's configuration file with `change` (it applies at a reload or restart).
    pub fn rewrite_relay_config(&self, change: impl FnOnce(String) -> String) -> Result<()> {
        let text = fs::read_to_string(&self.relay_config)?;
        fs::write(&self.relay_config, change(text))?;
        Ok(())
    }

    /// Sends the relay SIGHUP: it re-reads its `[[clusters]]`.
    pub fn hup_relay(&self) -> Result<()> {
        let pid = self
            .relay
            .lock()
            .unwrap()
            .as_ref()
            .context("no relay running")?
            .program_pid()?;
        let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -HUP {pid} failed");
        Ok(())
    }

    /// The relay process's pid.
    pub fn relay_pid(&self) -> Result<u32> {
        self.relay
            .lock()
            .unwrap()
            .as_ref()
            .context("no relay running")?
            .program_pid()
    }

    /// Writes a token to a file of its own and returns the path.
    pub fn token_file(&self, subject: &str, groups: &[&str]) -> Result<PathBuf> {
        let path = self.unique_path(&format!("{subject}.token"));
        fs::write(&path, self.issue_token(subject, groups)?)?;
        Ok(path)
    }

    /// Starts `hawser proxy` for this caller (and `extra` arguments) on a
    /// kubeconfig of its own; the proxy runs until the `Background` drops.
    pub fn proxy(&self, subject: &str, groups: &[&str], extra: &[&OsStr]) -> Result<(Background, Kubectl)> {
        let token_file = self.token_file(subject, groups)?;
        let kubeconfig = self.unique_path(&format!("{subject}.proxy.kubeconfig"));
        let mut cmd = Command::new(hawser_bin());
        cmd.args(["proxy", "--relay", &self.relay_url, "--cluster", CLUSTER, "--ca-file"])
            .arg(&self.relay_ca)
            .arg("--token-file")
            .arg(&token_file)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(extra);
        let mut proxy = Background::spawn(cmd)?;
        let line = proxy.wait_for_line("the proxy's listening line", Duration::from_secs(30), |l| {
            l.starts_with("hawser proxy listening on 127.0.0.1:")
        })?;
        anyhow::ensure!(
            line.contains(&format!("hawser-{CLUSTER}")),
            "the proxy did not name its context: {line}"
        );
        Ok((proxy, Kubectl::new(&binaries()?.kubectl, &kubeconfig)))
    }

    /// kubectl through the relay with a `hawser kubeconfig` (exec plugin) for this caller.
    pub fn kubeconfig_route(&self, subject: &str, groups: &[&str]) -> Result<Kubectl> {
        self.kubeconfig_route_at(&self.relay_url, subject, groups)
    }

    /// Like [`Hawser::kubeconfig_route`], reaching the relay at `relay_url` (e.g. a balancer's).
    pub fn kubeconfig_route_at(&self, relay_url: &str, subject: &str, groups: &[&str]) -> Result<Kubectl> {
        let token_file = self.token_file(subject, groups)?;
        self.kubeconfig_with(relay_url, CLUSTER, &token_file, subject)
    }

    /// kubectl to `cluster` at `relay_url` with a `hawser kubeconfig` whose exec plugin reads
    /// `token_file`; the kubeconfig is named after `name`.
    pub fn kubeconfig_with(&self, relay_url: &str, cluster: &str, token_file: &Path, name: &str) -> Result<Kubectl> {
        let mut cmd = Command::new(hawser_bin());
        cmd.args(["kubeconfig", "--relay", relay_url, "--cluster", cluster, "--ca-file"])
            .arg(&self.relay_ca)
            .arg("--token-file")
            .arg(token_file);
        let out = run_with_deadline(cmd, None, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!("hawser kubeconfig failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let path = self.unique_path(&format!("{name}.kubeconfig"));
        fs::write(&path, &out.stdout)?;
        Ok(Kubectl::new(&binaries()?.kubectl, &path))
    }

    /// The directory holding this deployment's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn spawn_relay(config: &Path, dir: &Path) -> Result<Supervised> {
    Supervised::spawn(
        &binaries()?.reaper,
        "hawser relay",
        &hawser_bin(),
        &["relay".into(), "--config".into(), config.display().to_string()],
        &dir.join("relay.log"),
        false,
    )
}
