//! The trust model (docs/security.md, issue #10): what an agent receives is good at no other
//! cluster, a relay cannot mint an identity for an agent that trusts only its callers' issuer,
//! tokens are revoked per cluster without touching other tunnels, and what the apiserver acts
//! on is what the audit records. Agents of our own (`support::rogue`, holding one cluster's agent
//! token) run in this process and keep whatever the relay sends them.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hawser::config::TunnelConfig;
use hawser::proto::{self, Accepts, Credential};
use serde_json::Value;

use crate::routes::Deployment;
use crate::support::hawser::{CLUSTER, Extra, Hawser, Trust, cluster_audience};
use crate::support::process::wait_for;
use crate::support::rogue::{Rogue, Seen, relay_addr};
use crate::support::{Testbed, https};
use crate::tunnel::{raw_kubectl, whoami};

/// A trust test.
pub type Test = fn(&Testbed, &Deployment) -> Result<()>;

/// Every trust test, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "an_agent_receives_nothing_good_at_another_cluster",
        an_agent_receives_nothing_good_at_another_cluster,
    ),
    (
        "only_tokens_bound_to_the_cluster_reach_its_agent",
        only_tokens_bound_to_the_cluster_reach_its_agent,
    ),
    (
        "a_relay_cannot_mint_an_identity_where_agents_trust_only_their_issuer",
        a_relay_cannot_mint_an_identity_where_agents_trust_only_their_issuer,
    ),
    (
        "revoking_one_clusters_token_leaves_other_tunnels_up",
        revoking_one_clusters_token_leaves_other_tunnels_up,
    ),
    (
        "unproven_agent_connections_keep_relay_memory_flat",
        unproven_agent_connections_keep_relay_memory_flat,
    ),
    (
        "the_audit_records_what_the_apiserver_decodes",
        the_audit_records_what_the_apiserver_decodes,
    ),
    (
        "non_ascii_names_reach_rbac_unchanged",
        non_ascii_names_reach_rbac_unchanged,
    ),
];

/// The other cluster every test deployment knows (agent token `elsewhere-token`).
const ELSEWHERE: &str = "elsewhere";

/// GET `path` on `cluster` through the relay with `token`: status and body.
fn get(hawser: &Hawser, cluster: &str, path: &str, token: &str) -> Result<(u16, String)> {
    let url = format!("{}/clusters/{cluster}{path}", hawser.relay_url);
    https::get(&url, &hawser.relay_ca, &[("Authorization", &format!("Bearer {token}"))])
}

/// The claims of a JWT, unverified.
fn claims(jwt: &str) -> Result<Value> {
    let payload = jwt.split('.').nth(1).context("not a JWT")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?)
}

/// The lines of a JSON-lines file in the deployment's directory.
fn json_lines(hawser: &Hawser, file: &str) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(hawser.dir().join(file)).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("{file}: not JSON: {l}")))
        .collect()
}

fn an_agent_receives_nothing_good_at_another_cluster(tb: &Testbed, _: &Deployment) -> Result<()> {
    // A rogue agent of its own: the shared deployment's other cluster must stay offline.
    let hawser = Hawser::start(tb)?;
    let assertions = Accepts::Assertion {
        issuer: format!("{}/assertions", hawser.relay_url),
    };
    let rogue = Rogue::register(&hawser, ELSEWHERE, "elsewhere-token", "rogue-1", assertions.clone())?;
    let token = hawser.issue_token("hawser-admin", &[])?;
    let (status, body) = get(&hawser, ELSEWHERE, "/version", &token)?;
    ensure!(status == 200, "a request for the rogue's cluster: {status} {body}");
    let seen = rogue.seen();
    let [Seen { header, request }] = seen.as_slice() else {
        bail!("the rogue saw {} streams", seen.len());
    };
    // The finding: the rogue received the caller's relay JWT and replayed it at another cluster.
    ensure!(
        !request.to_ascii_lowercase().contains("authorization:") && !request.contains(&token),
        "the caller's token reached an agent: {request}"
    );
    let Credential::Assertion(assertion) = &header.credential else {
        bail!("expected a relay assertion, got {:?}", header.credential);
    };
    ensure!(!assertion.contains(&token), "the assertion carries the caller's token");
    let stated = claims(assertion)?;
    ensure!(
        stated["aud"] == "hawser:cluster:elsewhere" && stated["sub"] == "hawser-admin",
        "the assertion is not bound to its cluster: {stated}"
    );
    // Replayed as a caller's token, for this cluster or another: refused.
    for cluster in [CLUSTER, ELSEWHERE] {
        let (status, body) = get(&hawser, cluster, "/version", assertion)?;
        ensure!(status == 401, "an assertion replayed at {cluster}: {status} {body}");
    }

    // A second instance with the same agent token is visible: a warning and an audit event.
    let _second = Rogue::register(&hawser, ELSEWHERE, "elsewhere-token", "rogue-2", assertions)?;
    wait_for(
        "the relay to record the second instance",
        Duration::from_secs(10),
        || {
            let registered = json_lines(&hawser, "relay-audit.log")?
                .into_iter()
                .find(|l| l["event"] == "agent_registered" && l["agent"] == "rogue-2");
            Ok(registered)
        },
    )
    .and_then(|line| {
        ensure!(line["beside"] == serde_json::json!(["rogue-1"]), "audit: {line}");
        Ok(())
    })?;
    let log = std::fs::read_to_string(hawser.dir().join("relay.log"))?;
    ensure!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("another agent instance joined") && l.contains("rogue-2")),
        "no warning for the second instance"
    );
    Ok(())
}

/// A deployment of its own in which agents take callers' own tokens from an external issuer.
fn caller_token_deployment(tb: &Testbed) -> Result<Hawser> {
    Hawser::start_with(
        tb,
        &Extra {
            trust: Trust::CallerTokens,
            ..Extra::default()
        },
    )
}

fn only_tokens_bound_to_the_cluster_reach_its_agent(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = caller_token_deployment(tb)?;
    // The agent checks the caller's own token; kubectl works as usual.
    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    ensure!(whoami(&kubectl, &[])?["username"] == "hawser-admin");

    let (testbed, elsewhere) = (cluster_audience(CLUSTER), cluster_audience(ELSEWHERE));
    let both = hawser.issue_token_for("hawser-admin", &[], &[&testbed, &elsewhere])?;
    let (status, body) = get(&hawser, CLUSTER, "/version", &both)?;
    ensure!(
        status == 401 && body.contains("also good for cluster \\\"elsewhere\\\""),
        "a token good at two clusters was sent to one: {status} {body}"
    );
    let for_elsewhere = hawser.issue_token_for("hawser-admin", &[], &[&elsewhere])?;
    let (status, body) = get(&hawser, CLUSTER, "/version", &for_elsewhere)?;
    ensure!(
        status == 401 && body.contains("not for cluster"),
        "another cluster's token: {status} {body}"
    );

    // A rogue agent for elsewhere receives only tokens bound to elsewhere: useless at testbed.
    let rogue = Rogue::register(
        &hawser,
        ELSEWHERE,
        "elsewhere-token",
        "rogue",
        Accepts::CallerToken {
            audiences: vec![elsewhere.clone()],
        },
    )?;
    let (status, body) = get(&hawser, ELSEWHERE, "/version", &for_elsewhere)?;
    ensure!(status == 200, "through the rogue: {status} {body}");
    let seen = rogue.seen();
    let Some(Credential::CallerToken(harvested)) = seen.first().map(|s| &s.header.credential) else {
        bail!("the rogue saw {seen:?}");
    };
    ensure!(claims(harvested)?["aud"] == elsewhere.as_str());
    let (status, body) = get(&hawser, CLUSTER, "/version", harvested)?;
    ensure!(status == 401, "a harvested token replayed at testbed: {status} {body}");
    let testbed_kubectl = raw_kubectl(&hawser, "harvested", CLUSTER, harvested)?;
    ensure!(!testbed_kubectl.run(&["get", "--raw", "/version"])?.status.success());
    drop(rogue);

    // Mixed: elsewhere now takes relay assertions. A token bound to testbed (what testbed's
    // agent receives) must not buy an assertion there.
    hawser.stop_relay();
    hawser.rewrite_relay_config(|text| {
        text.replace(&format!("caller_audience = \"{elsewhere}\""), "").replacen(
            "[[access]]",
            "[assertions]\nissuer = \"https://relay.e2e.invalid/assertions\"\nsigning_key_file = \"assertion.key\"\ngenerate = true\n[[access]]",
            1,
        )
    })?;
    hawser.start_relay()?;
    let for_testbed = hawser.issue_token("hawser-admin", &[])?;
    let (status, body) = wait_for("the restarted relay", Duration::from_secs(30), || {
        Ok(get(&hawser, ELSEWHERE, "/version", &for_testbed).ok())
    })?;
    ensure!(
        status == 401 && body.contains("bound to cluster \\\"testbed\\\""),
        "a token bound to testbed was taken at an assertion cluster: {status} {body}"
    );
    Ok(())
}

fn a_relay_cannot_mint_an_identity_where_agents_trust_only_their_issuer(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = caller_token_deployment(tb)?;
    // A compromised relay: the same TLS key and agent tokens, and an issuer of its own that
    // mints tokens for the cluster's audience (all a relay process could do with its keys).
    let testbed = cluster_audience(CLUSTER);
    let evil_key = hawser.dir().join("evil.key");
    let hawser_cmd = |args: &[&str]| -> Result<String> {
        let mut cmd = std::process::Command::new(crate::support::hawser::hawser_bin());
        cmd.args(args).arg("--signing-key").arg(&evil_key);
        let out = crate::support::process::run_with_deadline(cmd, None, Duration::from_secs(30))?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    };
    std::fs::write(
        hawser.dir().join("evil-jwks.json"),
        hawser_cmd(&["token", "jwks", "--generate"])?,
    )?;
    let minted = hawser_cmd(&[
        "token",
        "issue",
        "--issuer",
        "https://evil.e2e.invalid",
        "--audience",
        &testbed,
        "--subject",
        "hawser-admin",
    ])?;
    hawser.stop_relay();
    let elsewhere_entry = format!(
        "[[clusters]]\nname = \"{ELSEWHERE}\"\nagent_token_sha256 = \"{}\"\ncaller_audience = \"{}\"\n",
        hawser::relay::token_digest_hex("elsewhere-token"),
        cluster_audience(ELSEWHERE)
    );
    hawser.rewrite_relay_config(|text| {
        let start = text.find("[[issuers]]").unwrap_or(0);
        let end = text[start..].find("[[access]]").map_or(text.len(), |i| start + i);
        format!(
            "{}[[issuers]]\nissuer = \"https://evil.e2e.invalid\"\naudiences = [\"{testbed}\"]\njwks_file = \"evil-jwks.json\"\n{}",
            &text[..start],
            &text[end..]
        )
        .replace(&elsewhere_entry, "")
    })?;
    hawser.start_relay()?;
    // The relay takes its own token and forwards it; the agent refuses it (and is connected:
    // the answer is not 503).
    let (status, body) = wait_for(
        "the agent back on the compromised relay",
        Duration::from_secs(60),
        || {
            let (status, body) = get(&hawser, CLUSTER, "/version", &minted)?;
            Ok((status != 503).then_some((status, body)))
        },
    )?;
    ensure!(
        status == 401 && body.contains("token issuer is not trusted"),
        "a token the relay minted was accepted by the agent: {status} {body}"
    );

    // Nor can it switch the cluster to its own assertions: the agent will not register.
    hawser.stop_relay();
    hawser.rewrite_relay_config(|text| {
        text.replace(&format!("caller_audience = \"{testbed}\""), "")
            .replacen(
                "[[access]]",
                "[assertions]\nissuer = \"https://evil.e2e.invalid/a\"\nsigning_key_file = \"evil-a.key\"\ngenerate = true\n[[access]]",
                1,
            )
    })?;
    hawser.start_relay()?;
    let agent_log = hawser.dir().join("agent.log");
    wait_for(
        "the agent to refuse the relay's assertions",
        Duration::from_secs(60),
        || {
            let log = std::fs::read_to_string(&agent_log)?;
            Ok(log.contains("this relay sends relay assertions").then_some(()))
        },
    )?;
    let (status, body) = get(&hawser, CLUSTER, "/version", &minted)?;
    ensure!(
        status == 503,
        "with no agent that trusts it, the cluster is offline: {status} {body}"
    );
    Ok(())
}

fn revoking_one_clusters_token_leaves_other_tunnels_up(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let token_file = hawser.unique_path("elsewhere.agent-token");
    std::fs::write(&token_file, "elsewhere-token")?;
    let config = std::fs::read_to_string(hawser.agent_config())?
        .replace(
            &format!("cluster = \"{CLUSTER}\""),
            &format!("cluster = \"{ELSEWHERE}\""),
        )
        .replace("instance = \"agent-e2e\"", "instance = \"agent-elsewhere\"")
        .replace(
            "token_file = \"agent-token\"",
            &format!("token_file = \"{}\"", token_file.display()),
        );
    let config_path = hawser.unique_path("elsewhere-agent.toml");
    std::fs::write(&config_path, config)?;
    let _elsewhere = hawser.spawn_agent("agent-elsewhere", &config_path)?;
    let registered = |agent: &str| -> Result<usize> {
        Ok(json_lines(&hawser, "relay-audit.log")?
            .iter()
            .filter(|l| l["event"] == "agent_registered" && l["agent"] == agent)
            .count())
    };
    wait_for("the elsewhere agent to register", Duration::from_secs(30), || {
        Ok((registered("agent-elsewhere")? > 0).then_some(()))
    })?;

    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    let ns = tb.namespace("revoke")?;
    tb.set_value(&ns, "watched", "one")?;
    let mut watch = kubectl.watch_values(&ns, "watched")?;
    watch.wait_for_line("the initial value", Duration::from_secs(30), |l| l == "one")?;

    let old = hawser::relay::token_digest_hex("elsewhere-token");
    let new = hawser::relay::token_digest_hex("rotated-elsewhere-token");
    hawser.rewrite_relay_config(|text| text.replace(&old, &new))?;
    hawser.hup_relay()?;
    wait_for("the revoked session to close", Duration::from_secs(20), || {
        let revoked = json_lines(&hawser, "relay-audit.log")?
            .iter()
            .any(|l| l["event"] == "agent_revoked" && l["agent"] == "agent-elsewhere");
        Ok(revoked.then_some(()))
    })?;
    let elsewhere_log = hawser.dir().join("agent-elsewhere.log");
    wait_for(
        "the revoked agent to be refused on its return",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(&elsewhere_log)?;
            Ok((log.contains("revoked") && log.contains("wrong agent token")).then_some(()))
        },
    )?;

    // The other cluster's tunnel never moved: the same session, and its watch goes on.
    tb.set_value(&ns, "watched", "two")?;
    watch.wait_for_line("a change after the reload", Duration::from_secs(30), |l| l == "two")?;
    ensure!(registered("agent-e2e")? == 1, "the testbed agent had to register again");
    Ok(())
}

/// The relay process's resident memory, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn unproven_agent_connections_keep_relay_memory_flat(tb: &Testbed, _: &Deployment) -> Result<()> {
    const CONNECTIONS: usize = 64;
    let hawser = Hawser::start(tb)?;
    let pid = hawser.relay_pid()?;
    let before = rss_kib(pid)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let addr = relay_addr(&hawser)?;
    let trust = hawser::tls::RelayTrust::load(Some(&hawser.relay_ca), &[])?;
    // The finding: 64 connections that never said hello pushed the relay from 44 to 307 MiB.
    let pushed: Vec<(quinn::Connection, usize)> = runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS {
            let endpoint = hawser::tunnel::agent_endpoint(&trust, &TunnelConfig::default(), addr)?;
            let connection = hawser::tunnel::dial(&endpoint, addr, "localhost", Duration::from_secs(10)).await?;
            held.push((endpoint, connection));
        }
        // Each starts a hello it never finishes (so the relay waits on its control stream), then
        // pushes bytes on a second stream the relay never reads.
        let pushes = held.iter().map(|(_, connection)| {
            let connection = connection.clone();
            async move {
                let mut accepted = 0;
                let wait = Duration::from_millis(500);
                if let Ok(Ok((mut control, _))) = tokio::time::timeout(wait, connection.open_bi()).await {
                    let mut partial = b"HWSR\x02".to_vec();
                    partial.extend_from_slice(&(proto::MAX_HELLO as u16).to_be_bytes());
                    partial.extend_from_slice(&[b'{'; 1000]);
                    if let Ok(Ok(())) = tokio::time::timeout(wait, control.write_all(&partial)).await {
                        accepted += partial.len();
                    }
                    std::mem::forget(control);
                }
                if let Ok(Ok((mut send, _))) = tokio::time::timeout(wait, connection.open_bi()).await {
                    let chunk = vec![0x5a; 64 * 1024];
                    while let Ok(Ok(n)) = tokio::time::timeout(wait, send.write(&chunk)).await {
                        accepted += n;
                        if accepted >= 4 * 1024 * 1024 {
                            break;
                        }
                    }
                    std::mem::forget(send);
                }
                (connection, accepted)
            }
        });
        Ok::<_, anyhow::Error>(futures_util::future::join_all(pushes).await)
    })?;
    let after = rss_kib(pid)?;
    let most = pushed.iter().map(|(_, n)| *n).max().unwrap_or(0);
    eprintln!(
        "{CONNECTIONS} unproven connections: relay RSS {} -> {} MiB; at most {most} bytes accepted on one",
        before / 1024,
        after / 1024
    );
    ensure!(
        most <= hawser::tunnel::UNPROVEN_RECEIVE_WINDOW as usize,
        "an unproven connection got {most} bytes into the relay"
    );
    ensure!(
        after.saturating_sub(before) < 24 * 1024,
        "relay memory grew from {before} to {after} KiB under {CONNECTIONS} unproven connections"
    );
    drop(pushed);
    Ok(())
}

fn the_audit_records_what_the_apiserver_decodes(tb: &Testbed, deployment: &Deployment) -> Result<()> {
    let hawser = deployment.get(tb)?;
    let ns = tb.namespace("enc")?;
    tb.admin()
        .ok(&["create", "secret", "generic", "x", "-n", &ns, "--from-literal=k=v"])?;
    // `e2e-enc-...`: the first letter percent-encoded, and `secr%65ts` for `secrets`.
    let encoded = format!("%{:02X}{}", ns.as_bytes()[0], &ns[1..]);
    let path = format!("/api/v1/namespaces/{encoded}/secr%65ts/x");
    let (status, body) = get(&hawser, CLUSTER, &path, &hawser.issue_token("hawser-admin", &[])?)?;
    ensure!(status == 200 && body.contains("\"kind\":\"Secret\""), "{status} {body}");
    for file in ["relay-audit.log", "agent-audit.log"] {
        let line = wait_for(
            &format!("the request's line in {file}"),
            Duration::from_secs(20),
            || {
                Ok(json_lines(&hawser, file)?
                    .into_iter()
                    .find(|l| l["path"] == path.as_str()))
            },
        )?;
        // The finding: both lines said `kube%2Dsystem` and `secr%65ts`.
        ensure!(
            line["namespace"] == ns.as_str() && line["resource"] == "secrets" && line["name"] == "x",
            "{file} does not record what the apiserver acted on: {line}"
        );
    }
    Ok(())
}

fn non_ascii_names_reach_rbac_unchanged(tb: &Testbed, deployment: &Deployment) -> Result<()> {
    let hawser = deployment.get(tb)?;
    let ns = tb.namespace("utf8")?;
    let user = "jürgen-ü";
    tb.bind_role(&ns, "cluster-admin", user)?;
    let kubectl = hawser.kubeconfig_route(user, &["dev", "développeurs"])?;
    // The finding: a non-ASCII username got 500.
    let me = whoami(&kubectl, &[])?;
    ensure!(me["username"] == user, "whoami: {me}");
    ensure!(
        me["groups"]
            .as_array()
            .is_some_and(|g| g.contains(&serde_json::json!("développeurs"))),
        "groups: {me}"
    );
    kubectl.ok(&["create", "configmap", "c", "-n", &ns])?;
    let out = kubectl.run(&["get", "secrets", "-n", "default"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains(&format!("User \"{user}\"")),
        "RBAC saw another name: {stderr}"
    );
    Ok(())
}
