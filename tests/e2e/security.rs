//! The trust boundary under hostile or unusual input: passthrough tokens,
//! the audit trail, the agent's trust in its relay, and the front door's
//! limits. Each test holds a rule of docs/security.md.

use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::routes::Deployment;
use crate::support::hawser::{CLUSTER, Extra, Hawser};
use crate::support::process::wait_for;
use crate::support::{PodSpec, Testbed, https};
use crate::tunnel::{raw_kubectl, version};

/// A security test.
pub type Test = fn(&Testbed, &Deployment) -> Result<()>;

/// Every security test, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "passthrough_cluster_token_is_the_only_identity",
        crate::passthrough::passthrough_cluster_token_is_the_only_identity,
    ),
    (
        "passthrough_reviews_are_bounded_per_caller",
        crate::passthrough::passthrough_reviews_are_bounded_per_caller,
    ),
    ("audit_lines_join_relay_and_agent", audit_lines_join_relay_and_agent),
    (
        "agent_pinning_another_key_never_registers",
        agent_pinning_another_key_never_registers,
    ),
    (
        "agent_with_only_the_relay_key_pinned_serves",
        agent_with_only_the_relay_key_pinned_serves,
    ),
    ("front_door_limits_hold", front_door_limits_hold),
    (
        "hostile_headers_never_change_identity",
        hostile_headers_never_change_identity,
    ),
    ("h2_rapid_reset_gets_goaway", crate::h2flood::h2_rapid_reset_gets_goaway),
    (
        "connections_without_requests_are_closed",
        crate::h2flood::connections_without_requests_are_closed,
    ),
    (
        "h2_continuation_flood_is_cut",
        crate::h2flood::h2_continuation_flood_is_cut,
    ),
    (
        "h2_caller_that_reads_nothing_is_disconnected",
        crate::stall::h2_caller_that_reads_nothing_is_disconnected,
    ),
    (
        "h1_caller_that_reads_nothing_is_disconnected",
        crate::stall::h1_caller_that_reads_nothing_is_disconnected,
    ),
];

/// The pin of a PEM certificate's key, as `hawser pin --cert` prints it.
fn pin_of(cert: &std::path::Path) -> Result<String> {
    let mut cmd = std::process::Command::new(crate::support::hawser::hawser_bin());
    cmd.args(["pin", "--cert"]).arg(cert);
    let out = crate::support::process::run_with_deadline(cmd, None, Duration::from_secs(30))?;
    ensure!(
        out.status.success(),
        "hawser pin failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The deployment's agent configuration as instance `instance`, trusting
/// the relay by `pin` alone (no `ca_file`).
fn pinned_agent_config(hawser: &Hawser, instance: &str, pin: &str) -> Result<PathBuf> {
    let mut replaced = 0;
    let config = fs::read_to_string(hawser.dir().join("agent.toml"))?
        .lines()
        .map(|line| match line {
            "ca_file = \"relay.crt\"" => {
                replaced += 1;
                format!("pinned_key_sha256 = [\"{pin}\"]")
            }
            "instance = \"agent-e2e\"" => {
                replaced += 1;
                format!("instance = \"{instance}\"")
            }
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    ensure!(replaced == 2, "could not rewrite the agent config:\n{config}");
    let path = hawser.unique_path(&format!("{instance}.toml"));
    fs::write(&path, config + "\n")?;
    Ok(path)
}

fn agent_pinning_another_key_never_registers(tb: &Testbed, deployment: &Deployment) -> Result<()> {
    let hawser = deployment.get(tb)?;
    // Another key under the relay's names, as an impostor relay would hold.
    let (cert, key) = (hawser.unique_path("other.crt"), hawser.unique_path("other.key"));
    hawser::tls::ensure_self_signed(&cert, &key, &["localhost".into(), "127.0.0.1".into()])?;
    let (wrong, relay) = (pin_of(&cert)?, pin_of(&hawser.relay_ca)?);
    ensure!(wrong != relay, "two keys with one pin");
    let config = pinned_agent_config(&hawser, "agent-wrong-pin", &wrong)?;
    let mut agent = hawser.spawn_agent("wrong-pin", &config)?;
    // Two refused attempts: it keeps retrying, and a registration would have shown by then.
    let log = wait_for(
        "the agent to refuse the relay's key twice",
        Duration::from_secs(30),
        || {
            agent
                .ensure_running()
                .context("a refused relay should be retried, not crash the agent")?;
            let log = agent.log_tail(50);
            Ok((log.matches("is not in relay.pinned_key_sha256").count() >= 2).then_some(log))
        },
    )?;
    ensure!(
        log.contains("invalid peer certificate") && log.contains(&format!("(pin {relay})")),
        "the agent's log should name the cause and the key it was shown:\n{log}"
    );
    ensure!(
        !log.contains("tunnel up"),
        "a tunnel came up with an unpinned key:\n{log}"
    );
    let relay_log = fs::read_to_string(hawser.dir().join("relay.log"))?;
    ensure!(
        !relay_log.contains("agent-wrong-pin"),
        "the relay heard from the agent that refused it:\n{relay_log}"
    );
    // The relay sees the refusal at the handshake, before any hello.
    ensure!(
        relay_log.lines().any(|l| l.contains("agent handshake failed")
            && l.contains(&format!("(pin {relay}) is not in relay.pinned_key_sha256"))),
        "the relay's log does not show the refused handshake:\n{relay_log}"
    );
    Ok(())
}

fn agent_with_only_the_relay_key_pinned_serves(tb: &Testbed, _: &Deployment) -> Result<()> {
    // Replaces the agent, so it gets a deployment of its own.
    let hawser = Hawser::start(tb)?;
    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    hawser.stop_agent();
    wait_for(
        "the cluster to go offline without its agent",
        Duration::from_secs(30),
        || {
            let (ok, stderr) = version(&kubectl)?;
            Ok((!ok && stderr.contains("offline")).then_some(()))
        },
    )?;
    let config = pinned_agent_config(&hawser, "agent-pinned", &pin_of(&hawser.relay_ca)?)?;
    let mut agent = hawser.spawn_agent("pinned", &config)?;
    wait_for(
        "the cluster to answer through the pin-only agent",
        Duration::from_secs(30),
        || {
            agent.ensure_running()?;
            Ok(version(&kubectl)?.0.then_some(()))
        },
    )?;
    let relay_log = fs::read_to_string(hawser.dir().join("relay.log"))?;
    ensure!(
        relay_log
            .lines()
            .any(|l| l.contains("agent registered") && l.contains("agent-pinned")),
        "the relay did not register the pin-only agent:\n{relay_log}"
    );
    Ok(())
}

/// The JSON lines of an audit log in the deployment's directory.
fn audit_lines(hawser: &Hawser, file: &str) -> Result<Vec<Value>> {
    let text = fs::read_to_string(hawser.dir().join(file)).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{file}: not a JSON line: {l}")))
        .collect()
}

fn audit_lines_join_relay_and_agent(tb: &Testbed, deployment: &Deployment) -> Result<()> {
    let hawser = deployment.get(tb)?;
    let ns = tb.namespace("audit")?;
    tb.running_pod(&ns, "box", &PodSpec::default())?;
    tb.bind_role(&ns, "cluster-admin", "auditor")?;
    let kubectl = hawser.kubeconfig_route("auditor", &["dev"])?;
    let probe = format!("/api/v1/namespaces/{ns}/configmaps/audit-probe");
    let out = kubectl.run(&["get", "--raw", &probe])?;
    ensure!(!out.status.success(), "the probe ConfigMap should not exist");
    kubectl.ok(&["exec", "-n", &ns, "box", "--", "echo", "audited"])?;
    let refused = raw_kubectl(&hawser, "audit-garbage", CLUSTER, "not-a-token")?;
    let garbage_probe = format!("/api/v1/namespaces/{ns}/secrets");
    ensure!(!refused.run(&["get", "--raw", &garbage_probe])?.status.success());

    let find = |lines: &[Value], path: &str, caller: Option<&str>| -> Option<Value> {
        lines
            .iter()
            .find(|l| l["path"] == path && caller.is_none_or(|c| l["caller"] == c))
            .cloned()
    };
    let exec_path = format!("/api/v1/namespaces/{ns}/pods/box/exec");
    // Lines are written when each exchange is over, a moment after kubectl returns.
    let (relay, agent) = wait_for("the audit lines", Duration::from_secs(20), || {
        let relay = audit_lines(&hawser, "relay-audit.log")?;
        let agent = audit_lines(&hawser, "agent-audit.log")?;
        let complete = find(&relay, &probe, Some("auditor")).is_some()
            && find(&relay, &exec_path, Some("auditor")).is_some()
            && find(&agent, &exec_path, Some("auditor")).is_some()
            && find(&relay, &garbage_probe, None).is_some();
        Ok(complete.then_some((relay, agent)))
    })?;

    let get = find(&relay, &probe, Some("auditor")).unwrap();
    let id = get["request_id"].as_str().context("request_id")?;
    let agent_get = agent
        .iter()
        .find(|l| l["request_id"] == id)
        .with_context(|| format!("no agent line for {id}"))?;
    for (side, line) in [("relay", &get), ("agent", agent_get)] {
        ensure!(
            line["component"] == side
                && line["cluster"] == CLUSTER
                && line["verb"] == "get"
                && line["resource"] == "configmaps"
                && line["namespace"] == ns.as_str()
                && line["status"] == 404
                && line["relay"] == "relay-e2e"
                && line["agent"] == "agent-e2e"
                && line["groups"].as_array().is_some_and(|g| g.contains(&json!("dev"))),
            "{side} audit line: {line}"
        );
    }
    let exec = find(&relay, &exec_path, Some("auditor")).unwrap();
    ensure!(
        exec["status"] == 101
            && exec["resource"] == "pods/exec"
            && exec["upgrade"].is_string()
            && exec["bytes_out"].as_u64() > Some(0),
        "exec audit line: {exec}"
    );
    let garbage = find(&relay, &garbage_probe, None).unwrap();
    ensure!(
        garbage["status"] == 401 && garbage["caller"].is_null(),
        "refused line: {garbage}"
    );
    let garbage_id = garbage["request_id"].as_str().unwrap_or_default();
    ensure!(
        !agent.iter().any(|l| l["request_id"] == garbage_id),
        "a request refused at the relay reached the agent"
    );
    for file in ["relay-audit.log", "agent-audit.log"] {
        let text = fs::read_to_string(hawser.dir().join(file))?;
        ensure!(!text.contains("eyJ"), "{file} holds something that looks like a JWT");
    }
    Ok(())
}

/// GETs `path` on the deployment's cluster with `token`; returns status and body.
fn relay_get(hawser: &Hawser, path: &str, token: &str) -> Result<(u16, String)> {
    let url = format!("{}/clusters/{CLUSTER}{path}", hawser.relay_url);
    https::get(&url, &hawser.relay_ca, &[("Authorization", &format!("Bearer {token}"))])
}

fn front_door_limits_hold(tb: &Testbed, _: &Deployment) -> Result<()> {
    // Its own deployment: it exhausts limits other tests must not meet.
    let hawser = Hawser::start_with(
        tb,
        &Extra {
            tunnel: "[tunnel]\nmax_streams_per_tunnel = 3\n",
            relay: "[limits]\nmax_streams_per_caller = 2\nopen_stream_timeout_secs = 1\n\
                    max_header_bytes = 16384\nheader_read_timeout_secs = 2\nauth_failures_per_minute = 5\n",
            ..Extra::default()
        },
    )?;
    let ns = tb.namespace("limits")?;
    for user in ["alice", "bob"] {
        tb.bind_role(&ns, "cluster-admin", user)?;
    }
    let (alice, bob) = (
        hawser.issue_token("alice", &["dev"])?,
        hawser.issue_token("bob", &["dev"])?,
    );
    let watch = format!(
        "{}/clusters/{CLUSTER}/api/v1/namespaces/{ns}/configmaps?watch=true",
        hawser.relay_url
    );
    let hold = |token: &str| -> Result<https::Tls> {
        let (status, conn) = https::get_and_stall(
            &watch,
            &hawser.relay_ca,
            &[("Authorization", &format!("Bearer {token}"))],
        )?;
        ensure!(status == 200, "a watch got {status}");
        Ok(conn)
    };

    // Per caller: alice's third exchange is refused while two are open; bob is unaffected.
    let mut alice_watches = vec![hold(&alice)?, hold(&alice)?];
    let (status, body) = relay_get(&hawser, "/version", &alice)?;
    ensure!(
        status == 429 && body.contains("TooManyRequests") && body.contains("alice"),
        "a third exchange for alice: {status} {body}"
    );
    ensure!(
        relay_get(&hawser, "/version", &bob)?.0 == 200,
        "bob was limited by alice's streams"
    );

    // Per tunnel: with all three streams of the tunnel held, a request waits one second, then 503.
    let _bob_watch = hold(&bob)?;
    let started = Instant::now();
    let (status, body) = relay_get(&hawser, "/version", &hawser.issue_token("carol", &["dev"])?)?;
    ensure!(
        status == 503 && body.contains("saturated"),
        "a request on a full tunnel: {status} {body}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "the 503 took {:?}",
        started.elapsed()
    );

    // A closed watch frees its slots.
    drop(alice_watches.pop());
    wait_for("alice's closed watch to free her slot", Duration::from_secs(20), || {
        Ok((relay_get(&hawser, "/version", &alice)?.0 == 200).then_some(()))
    })?;
    drop(alice_watches);

    // Request headers past max_header_bytes: 431, nothing forwarded.
    let big = "x".repeat(20 * 1024);
    let url = format!("{}/clusters/{CLUSTER}/version", hawser.relay_url);
    let (status, _) = https::get(
        &url,
        &hawser.relay_ca,
        &[("Authorization", &format!("Bearer {bob}")), ("X-Big", &big)],
    )?;
    ensure!(status == 431, "a 20 KiB header got {status}");

    // Slowloris: a request head never finished is cut after header_read_timeout_secs.
    let mut slow = https::connect(&hawser.relay_url, &hawser.relay_ca)?;
    slow.write_all(b"GET /clusters/testbed/version HTTP/1.1\r\nHost: x\r\n")?;
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let held = started.elapsed();
    ensure!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(10),
        "an unfinished request head was cut after {held:?}, not the configured 2 s"
    );

    // Failed authentications: after five from this address, even a valid token gets 429 (for a while).
    for i in 0..5 {
        let (status, _) = relay_get(&hawser, "/version", &format!("bad-token-{i}"))?;
        ensure!(status == 401, "bad token {i}: {status}");
    }
    let (status, body) = relay_get(&hawser, "/version", &bob)?;
    ensure!(
        status == 429 && body.contains("failed authentications"),
        "after five failures: {status} {body}"
    );
    Ok(())
}

fn hostile_headers_never_change_identity(tb: &Testbed, deployment: &Deployment) -> Result<()> {
    let hawser = deployment.get(tb)?;
    let token = hawser.issue_token("mallory", &["dev"])?;
    let bearer = format!("Bearer {token}");
    let url = format!(
        "{}/clusters/{CLUSTER}/api/v1/namespaces/kube-system/secrets",
        hawser.relay_url
    );
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "Connection naming the identity headers",
            vec![
                ("Impersonate-User", "hawser-admin"),
                ("Impersonate-Group", "system:masters"),
                ("Connection", "Impersonate-User, Authorization"),
            ],
        ),
        (
            "mixed-case and repeated Impersonate-*",
            vec![
                ("iMpErSoNaTe-uSeR", "hawser-admin"),
                ("IMPERSONATE-GROUP", "system:masters"),
                ("impersonate-group", "system:masters"),
                ("Impersonate-Uid", "0"),
                ("Impersonate-Extra-Scopes", "all"),
            ],
        ),
        (
            "X-Remote-*",
            vec![("X-Remote-User", "hawser-admin"), ("X-Remote-Group", "system:masters")],
        ),
        (
            "a cluster token to an identity-mode agent",
            vec![("Hawser-Cluster-Authorization", "Bearer made-up")],
        ),
    ];
    for (name, extra) in cases {
        let mut headers = vec![("Authorization", bearer.as_str())];
        headers.extend(extra);
        let (status, body) = https::get(&url, &hawser.relay_ca, &headers)?;
        ensure!(
            matches!(status, 401 | 403) && !body.contains("\"kind\":\"SecretList\""),
            "{name}: {status} {body}"
        );
        ensure!(
            status == 401 || body.contains("mallory") || body.contains("cluster tokens"),
            "{name}: refused, but not as mallory: {body}"
        );
    }
    // CONNECT would make a tunnel to any host: refused at the front door.
    let mut tls = https::connect(&hawser.relay_url, &hawser.relay_ca)?;
    let connect = format!("CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\nAuthorization: {bearer}\r\n\r\n");
    tls.write_all(connect.as_bytes())?;
    let mut head = [0u8; 12];
    tls.read_exact(&mut head)?;
    ensure!(&head == b"HTTP/1.1 405", "CONNECT: {}", String::from_utf8_lossy(&head));

    // Request smuggling: by Content-Length the body would hold a second request
    // for the admin's path; the relay reads by Transfer-Encoding, drops
    // Content-Length, answers once and closes, so nothing follows.
    let mut tls = https::connect(&hawser.relay_url, &hawser.relay_ca)?;
    let smuggled = format!("GET /clusters/{CLUSTER}/api/v1/namespaces/kube-system/secrets HTTP/1.1\r\nHost: x\r\n\r\n");
    let request = format!(
        "POST /clusters/{CLUSTER}/api/v1/namespaces/kube-system/configmaps HTTP/1.1\r\nHost: x\r\n\
         Authorization: {bearer}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    tls.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    ensure!(
        answer.matches("HTTP/1.1 ").count() == 1 && answer.to_lowercase().contains("connection: close"),
        "Content-Length beside Transfer-Encoding: expected one answer and a closed connection, got: {answer}"
    );
    Ok(())
}
