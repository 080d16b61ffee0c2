//! `hawser doctor` against a real relay, agent and apiserver: a healthy agent's configuration
//! passes every check while its tunnel stays up, and each failure, made on its own in a copy of
//! that configuration, is one line naming its cause, with a non-zero exit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::support::Testbed;
use crate::support::hawser::rbac::service_account_kubeconfig;
use crate::support::hawser::{Hawser, hawser_bin};
use crate::support::net::{free_port, free_tcp_and_udp_port};
use crate::support::process::{run_with_deadline, wait_for};
use crate::support::proxy::HttpsProxy;

/// A doctor test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every doctor test, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "a_healthy_agent_passes_every_check_and_keeps_its_tunnel",
        a_healthy_agent_passes_every_check_and_keeps_its_tunnel,
    ),
    (
        "each_relay_failure_is_one_line_with_its_cause",
        each_relay_failure_is_one_line_with_its_cause,
    ),
    ("proxy_failures_are_the_proxys_line", proxy_failures_are_the_proxys_line),
    (
        "apiserver_failures_and_missing_rights_are_named",
        apiserver_failures_and_missing_rights_are_named,
    ),
];

/// What one run of `hawser doctor` printed, and whether it exited 0.
struct Diagnosis {
    passed: bool,
    lines: Vec<String>,
    stderr: String,
}

impl Diagnosis {
    /// The line of the check `name`, which must have `status` and contain every one of `texts`.
    fn expect(&self, status: &str, name: &str, texts: &[&str]) -> Result<&str> {
        let line = self
            .lines
            .iter()
            .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(&format!("{name}: "))))
            .with_context(|| format!("no line for {name:?}:\n{self}"))?;
        ensure!(
            line.starts_with(&format!("{status:<6}")),
            "{name} is not {status}:\n{self}"
        );
        for text in texts {
            ensure!(line.contains(text), "{name}'s line has no {text:?}:\n{self}");
        }
        Ok(line)
    }

    /// Fails unless the run exited non-zero, saying how many checks failed.
    fn failed(&self, failures: usize) -> Result<()> {
        let said = if failures == 1 {
            "hawser: 1 check failed".to_owned()
        } else {
            format!("hawser: {failures} checks failed")
        };
        ensure!(
            !self.passed && self.stderr.trim() == said,
            "expected a non-zero exit and {said:?}:\n{self}"
        );
        Ok(())
    }
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "exit 0: {}", self.passed)?;
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        write!(f, "stderr: {}", self.stderr)
    }
}

/// Runs `hawser doctor --config config` (a minute at most: no check may hang).
fn doctor(config: &Path) -> Result<Diagnosis> {
    let mut cmd = std::process::Command::new(hawser_bin());
    cmd.arg("doctor").arg("--config").arg(config);
    let out = run_with_deadline(cmd, None, Duration::from_secs(60))?;
    Ok(Diagnosis {
        passed: out.status.success(),
        lines: String::from_utf8(out.stdout)?.lines().map(str::to_owned).collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A copy of the deployment's agent configuration, `change` applied to its text, beside it (so its
/// relative paths still hold).
fn variant(hawser: &Hawser, name: &str, change: impl FnOnce(String) -> String) -> Result<PathBuf> {
    let text = std::fs::read_to_string(hawser.agent_config())?;
    let path = hawser.unique_path(&format!("doctor-{name}.toml"));
    std::fs::write(&path, change(text))?;
    Ok(path)
}

/// `text` with the line starting `key = ` replaced by `line` (removed if empty).
fn set(text: &str, key: &str, line: &str) -> String {
    let prefix = format!("{key} = ");
    text.lines()
        .filter_map(|l| match l.starts_with(&prefix) {
            true if line.is_empty() => None,
            true => Some(line.to_owned()),
            false => Some(l.to_owned()),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with `lines` added to its `[relay]` table.
fn in_relay(text: &str, lines: &str) -> String {
    text.replacen("[relay]\n", &format!("[relay]\n{lines}\n"), 1)
}

/// The relay's audit events of `kind`.
fn relay_events(hawser: &Hawser, kind: &str) -> Result<usize> {
    let log = std::fs::read_to_string(hawser.dir().join("relay-audit.log"))?;
    Ok(log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["event"] == kind)
        .count())
}

fn a_healthy_agent_passes_every_check_and_keeps_its_tunnel(tb: &Testbed) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let registered = relay_events(&hawser, "agent_registered")?;
    let seen = doctor(hawser.agent_config())?;
    ensure!(seen.passed && seen.stderr.is_empty(), "a healthy agent fails:\n{seen}");
    ensure!(seen.lines.len() == 8, "one line per check:\n{seen}");
    seen.expect(
        "ok",
        "config",
        &[
            "cluster testbed",
            "instance agent-e2e",
            "transport auto",
            "mode identity",
        ],
    )?;
    let port = hawser.relay_port();
    let relay = format!("127.0.0.1:{port}, certificate verified by ca_file (");
    seen.expect("ok", "relay over QUIC", &[&relay, " ms)"])?;
    seen.expect("skip", "proxy", &["none applies"])?;
    seen.expect("ok", "relay over TCP", &[&relay])?;
    seen.expect(
        "ok",
        "agent token",
        &["relay relay-e2e accepts cluster testbed's token and trust model over QUIC and TCP"],
    )?;
    seen.expect(
        "ok",
        "apiserver",
        &[&format!("{} answered GET /version: v1.37.2", tb.server)],
    )?;
    seen.expect("ok", "impersonation rights", &["may impersonate users, groups"])?;
    seen.expect("skip", "tokenreview rights", &["not needed (mode = \"identity\""])?;

    // The probes replaced nothing: the relay registered no one, and the agent still serves.
    ensure!(
        relay_events(&hawser, "agent_registered")? == registered,
        "the doctor registered a tunnel"
    );
    wait_for("the relay to record both probes", Duration::from_secs(10), || {
        Ok((relay_events(&hawser, "agent_probed")? == 2).then_some(()))
    })?;
    ensure!(relay_events(&hawser, "agent_gone")? == 0, "the agent's session ended");
    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    for _ in 0..3 {
        let out = kubectl.run(&["get", "--raw=/version"])?;
        ensure!(
            out.status.success(),
            "the tunnel is down after the doctor: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn each_relay_failure_is_one_line_with_its_cause(tb: &Testbed) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let port = hawser.relay_port();

    // Nothing listens, on UDP or TCP.
    let nowhere = free_tcp_and_udp_port()?;
    let config = variant(&hawser, "unreachable", |t| {
        in_relay(
            &set(&t, "address", &format!("address = \"127.0.0.1:{nowhere}\"")),
            "quic_fallback_secs = 1",
        )
    })?;
    let seen = doctor(&config)?;
    seen.failed(2)?;
    seen.expect(
        "FAIL",
        "relay over QUIC",
        &[
            &format!("no QUIC handshake with 127.0.0.1:{nowhere} over UDP within 1 s"),
            "fix: check relay.address",
        ],
    )?;
    seen.expect(
        "FAIL",
        "relay over TCP",
        &[
            &format!("connecting to 127.0.0.1:{nowhere}: Connection refused"),
            "fix: check relay.tcp_address",
        ],
    )?;
    seen.expect("skip", "agent token", &["skipped: needs the relay"])?;
    seen.expect("ok", "apiserver", &[])?;

    // A CA that did not sign the relay's certificate (the test bed's).
    let ca = tb.pki.ca_cert.display().to_string();
    let config = variant(&hawser, "wrong-ca", |t| {
        set(&t, "ca_file", &format!("ca_file = \"{ca}\""))
    })?;
    let seen = doctor(&config)?;
    seen.failed(2)?;
    for transport in ["relay over QUIC", "relay over TCP"] {
        seen.expect(
            "FAIL",
            transport,
            &[
                &format!("the relay's certificate is not signed by ca_file ({ca})"),
                "fix: set relay.ca_file",
            ],
        )?;
    }
    seen.expect("skip", "agent token", &["skipped: needs the relay"])?;

    // A pin of another key; then the relay's own.
    let other = hawser::tls::Pin::of_pem_file(&tb.pki.ca_cert)?;
    let relay_pin = hawser::tls::Pin::of_pem_file(&hawser.relay_ca)?;
    let pinned = |name: &str, pin: &hawser::tls::Pin| {
        let line = format!("pinned_key_sha256 = [\"{pin}\"]");
        variant(&hawser, name, |t| in_relay(&set(&t, "ca_file", ""), &line))
    };
    let seen = doctor(&pinned("wrong-pin", &other)?)?;
    seen.failed(2)?;
    let shown = format!("the relay's key (pin {relay_pin}) is not in relay.pinned_key_sha256");
    seen.expect("FAIL", "relay over QUIC", &[&shown, "fix: pin the relay's current key"])?;
    seen.expect("FAIL", "relay over TCP", &[&shown])?;
    let seen = doctor(&pinned("right-pin", &relay_pin)?)?;
    ensure!(seen.passed, "pinned to the relay's key:\n{seen}");
    seen.expect("ok", "relay over QUIC", &["its key matches relay.pinned_key_sha256"])?;

    // The relay is reached, but refuses the token; and a cluster it does not know.
    let token = hawser.unique_path("wrong.agent-token");
    std::fs::write(&token, "not-the-agent-token")?;
    let config = variant(&hawser, "wrong-token", |t| {
        set(&t, "token_file", &format!("token_file = \"{}\"", token.display()))
    })?;
    for (config, cluster) in [
        (config, "testbed"),
        (
            variant(&hawser, "unknown-cluster", |t| {
                set(&t, "cluster", "cluster = \"nosuch\"")
            })?,
            "nosuch",
        ),
    ] {
        let seen = doctor(&config)?;
        seen.failed(1)?;
        seen.expect("ok", "relay over QUIC", &[])?;
        seen.expect("ok", "relay over TCP", &[])?;
        seen.expect(
            "FAIL",
            "agent token",
            &[
                &format!(
                    "the relay refused cluster {cluster}'s agent token over QUIC: unknown cluster or wrong agent token"
                ),
                "agent_token_sha256",
            ],
        )?;
    }

    // UDP goes nowhere (a socket that never answers), TCP reaches the relay: `auto` works, over
    // TCP, so QUIC is a warning; an agent of `transport = "quic"` fails.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let quic = black_hole.local_addr()?;
    let blocked = |name: &str, transport: &str| {
        let lines = format!("tcp_address = \"127.0.0.1:{port}\"\ntransport = \"{transport}\"\nquic_fallback_secs = 1");
        variant(&hawser, name, |t| {
            in_relay(&set(&t, "address", &format!("address = \"{quic}\"")), &lines)
        })
    };
    let seen = doctor(&blocked("udp-blocked-auto", "auto")?)?;
    ensure!(seen.passed, "auto with TCP working passes:\n{seen}");
    seen.expect(
        "warn",
        "relay over QUIC",
        &[
            &format!("no QUIC handshake with {quic} over UDP within 1 s"),
            "the agent falls back to TCP",
        ],
    )?;
    seen.expect("ok", "relay over TCP", &[])?;
    seen.expect("ok", "agent token", &["over TCP (probed"])?;
    let seen = doctor(&blocked("udp-blocked-quic", "quic")?)?;
    seen.failed(1)?;
    seen.expect("FAIL", "relay over QUIC", &["within 10 s"])?;
    seen.expect("skip", "relay over TCP", &["not used (relay.transport = \"quic\")"])?;
    drop(black_hole);

    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    let out = kubectl.run(&["get", "--raw=/version"])?;
    ensure!(out.status.success(), "the agent's tunnel is up after all of it");
    Ok(())
}

fn proxy_failures_are_the_proxys_line(tb: &Testbed) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let dir = tempfile::tempdir()?;
    let proxy = HttpsProxy::start(dir.path())?;
    let through = |name: &str, url: &str, auth: Option<&Path>| {
        let mut lines = format!("transport = \"tcp\"\nproxy = \"{url}\"");
        if let Some(auth) = auth {
            lines.push_str(&format!("\nproxy_auth_file = \"{}\"", auth.display()));
        }
        variant(&hawser, name, |t| in_relay(&t, &lines))
    };
    let port = hawser.relay_port();

    let seen = doctor(&through("proxy-ok", &proxy.url, Some(&proxy.auth_file))?)?;
    ensure!(seen.passed, "through the proxy:\n{seen}");
    seen.expect(
        "ok",
        "proxy",
        &[&format!("{} opened a tunnel to 127.0.0.1:{port}", proxy.url)],
    )?;
    seen.expect(
        "ok",
        "relay over TCP",
        &[&format!("127.0.0.1:{port} through the proxy")],
    )?;
    seen.expect("skip", "relay over QUIC", &["not used (relay.transport = \"tcp\")"])?;

    let seen = doctor(&through("proxy-no-credentials", &proxy.url, None)?)?;
    seen.failed(1)?;
    seen.expect(
        "FAIL",
        "proxy",
        &[
            &format!("CONNECT 127.0.0.1:{port} answered 407 Proxy Authentication Required"),
            "put user:password in a file named by relay.proxy_auth_file",
        ],
    )?;
    seen.expect("skip", "relay over TCP", &["skipped: needs the proxy"])?;
    seen.expect("skip", "agent token", &["skipped: needs the relay"])?;

    let nowhere = format!("http://127.0.0.1:{}", free_port()?);
    let seen = doctor(&through("proxy-unreachable", &nowhere, None)?)?;
    seen.failed(1)?;
    seen.expect(
        "FAIL",
        "proxy",
        &[
            &format!("proxy {nowhere}: connecting: Connection refused"),
            "check relay.proxy",
        ],
    )?;
    Ok(())
}

fn apiserver_failures_and_missing_rights_are_named(tb: &Testbed) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let kubeconfig_line = |path: &Path| format!("kubeconfig = \"{}\"", path.display());
    let using =
        |name: &str, kubeconfig: &Path| variant(&hawser, name, |t| set(&t, "kubeconfig", &kubeconfig_line(kubeconfig)));

    // Nothing listens at the kubeconfig's server.
    let nowhere = format!("https://127.0.0.1:{}", free_port()?);
    let agent_kubeconfig = std::fs::read_to_string(hawser.dir().join("hawser-agent.kubeconfig"))?;
    let unreachable = hawser.unique_path("unreachable.kubeconfig");
    std::fs::write(&unreachable, agent_kubeconfig.replace(&tb.server, &nowhere))?;
    let seen = doctor(&using("apiserver-unreachable", &unreachable)?)?;
    seen.failed(1)?;
    seen.expect("ok", "agent token", &[])?;
    seen.expect(
        "FAIL",
        "apiserver",
        &[
            &format!("{nowhere}: "),
            "Connection refused",
            "fix: nothing listens there",
        ],
    )?;
    seen.expect("skip", "impersonation rights", &["skipped: needs the apiserver"])?;

    // A service account with no rights at all.
    let none = service_account_kubeconfig(tb, hawser.dir(), "doctor-no-rights")?;
    let seen = doctor(&using("no-rights", &none)?)?;
    seen.failed(1)?;
    seen.expect("ok", "apiserver", &[])?;
    seen.expect(
        "FAIL",
        "impersonation rights",
        &[
            "the agent's credential may not impersonate users, impersonate groups",
            "fix: grant the agent's credential verb impersonate",
        ],
    )?;

    // Passthrough callers need TokenReview: an account that may impersonate but not review.
    let admin = tb.admin();
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "hawser-doctor-impersonate-only"},
        "rules": [{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}],
    });
    admin.ok_with_stdin(&["apply", "-f", "-"], role.to_string().as_bytes())?;
    admin.create_or_exists(&[
        "create",
        "clusterrolebinding",
        "hawser-doctor-impersonate-only",
        "--clusterrole=hawser-doctor-impersonate-only",
        "--serviceaccount=hawser-system:doctor-impersonate-only",
    ])?;
    let impersonate_only = service_account_kubeconfig(tb, hawser.dir(), "doctor-impersonate-only")?;
    let both = |name: &str, kubeconfig: &Path| {
        let kubeconfig = kubeconfig_line(kubeconfig);
        variant(&hawser, name, |t| {
            set(&t, "kubeconfig", &kubeconfig).replacen("[relay]", "mode = \"both\"\n[relay]", 1)
        })
    };
    let config = both("no-tokenreview", &impersonate_only)?;
    // RBAC takes a moment to enforce a new binding.
    let seen = wait_for("the new binding to be enforced", Duration::from_secs(30), || {
        let seen = doctor(&config)?;
        Ok(seen.expect("ok", "impersonation rights", &[]).is_ok().then_some(seen))
    })?;
    seen.failed(1)?;
    seen.expect(
        "FAIL",
        "tokenreview rights",
        &[
            "the agent's credential may not create tokenreviews",
            "system:auth-delegator",
        ],
    )?;
    let full = both("tokenreview", &hawser.dir().join("hawser-agent.kubeconfig"))?;
    let seen = doctor(&full)?;
    ensure!(seen.passed, "the deployment's account in mode both:\n{seen}");
    seen.expect("ok", "config", &["mode both"])?;
    seen.expect("ok", "tokenreview rights", &["may create tokenreviews"])?;
    Ok(())
}
