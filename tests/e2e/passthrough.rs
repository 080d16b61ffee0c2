//! Passthrough mode under hostile input: the caller's cluster token is the only identity that
//! reaches the apiserver, and random cluster tokens cannot make the apiserver run unbounded
//! TokenReviews. Registered in `security::TESTS`.

use std::ffi::OsStr;
use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::routes::Deployment;
use crate::support::hawser::{CLUSTER, Extra, Hawser};
use crate::support::process::wait_for;
use crate::support::{PodSpec, Testbed, https};
use crate::tunnel::whoami;

/// The apiserver's own audience (its service-account issuer) in the test bed.
const APISERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// A deployment of its own whose agent takes cluster tokens for the apiserver's audience.
fn passthrough_deployment(tb: &Testbed) -> Result<Hawser> {
    let passthrough = format!("mode = \"both\"\n[passthrough]\naudiences = [\"{APISERVER_AUDIENCE}\"]\n");
    Hawser::start_with(
        tb,
        &Extra {
            agent: &passthrough,
            ..Extra::default()
        },
    )
}

pub fn passthrough_cluster_token_is_the_only_identity(tb: &Testbed, deployment: &Deployment) -> Result<()> {
    // An agent in identity mode (the shared one) refuses cluster tokens outright.
    let shared = deployment.get(tb)?;
    let ns = tb.namespace("pt")?;
    let other = tb.namespace("pt-other")?;
    tb.running_pod(&ns, "box", &PodSpec::default())?;
    let sa_token = tb.service_account_token(&ns, "deployer")?;
    tb.bind_role(&ns, "cluster-admin", &format!("system:serviceaccount:{ns}:deployer"))?;
    let token_file = shared.unique_path("deployer.cluster-token");
    fs::write(&token_file, &sa_token)?;
    let with_token = [OsStr::new("--cluster-token-file"), token_file.as_os_str()];
    let (_refusing, kubectl) = shared.proxy("pt-caller", &["dev"], &with_token)?;
    // --raw: kubectl prints a refused discovery's Status message as "unknown".
    let pods = format!("/api/v1/namespaces/{ns}/pods");
    let out = kubectl.run(&["get", "--raw", &pods])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("does not accept cluster tokens"),
        "an identity-mode agent used a cluster token: {stderr}"
    );

    let hawser = passthrough_deployment(tb)?;
    let (_proxy, kubectl) = hawser.proxy("pt-caller", &["dev"], &with_token)?;
    let sa = format!("system:serviceaccount:{ns}:deployer");
    ensure!(
        whoami(&kubectl, &[])?["username"] == sa.as_str(),
        "passthrough is not the token's identity"
    );
    kubectl.ok(&["get", "pods", "-n", &ns])?;
    let out = kubectl.ok(&["exec", "-n", &ns, "box", "--", "echo", "through passthrough"])?;
    ensure!(out.contains("through passthrough"), "exec through passthrough: {out}");

    // The caller's own Impersonate-* headers change nothing: RBAC sees the token.
    let escalate = ["--as=hawser-admin", "--as-group=system:masters"];
    let me = whoami(&kubectl, &escalate)?;
    ensure!(
        me["username"] == sa.as_str() && !me.to_string().contains("system:masters"),
        "whoami --as: {me}"
    );
    let out = kubectl.run(&["get", "secrets", "-n", &other, escalate[0], escalate[1]])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains(&format!("User \"{sa}\"")),
        "caller impersonation headers changed the passthrough identity: {stderr}"
    );

    // A token for another audience, or none the cluster knows, stops at the agent with 401.
    let wrong_audience = tb
        .admin()
        .ok(&["create", "token", "deployer", "-n", &ns, "--audience=elsewhere"])?;
    for (name, token) in [
        ("wrong-audience", wrong_audience.trim()),
        ("garbage", "not-a-cluster-token"),
    ] {
        let file = hawser.unique_path(&format!("{name}.cluster-token"));
        fs::write(&file, token)?;
        let (_bad, kubectl) = hawser.proxy(
            "pt-caller",
            &["dev"],
            &[OsStr::new("--cluster-token-file"), file.as_os_str()],
        )?;
        let out = kubectl.run(&["get", "--raw", &pods])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("cluster token was rejected"),
            "{name} cluster token: expected 401 from the agent, got: {stderr}"
        );
    }

    // In "both" mode a caller without a cluster token is impersonated as before.
    let (_plain, kubectl) = hawser.proxy("pt-caller", &["dev"], &[])?;
    ensure!(
        whoami(&kubectl, &[])?["username"] == "pt-caller",
        "identity mode in \"both\""
    );
    Ok(())
}

/// TokenReviews kube-apiserver has served since it started, from its own metrics.
fn tokenreviews_served(tb: &Testbed) -> Result<u64> {
    let metrics = tb.admin().ok(&["get", "--raw", "/metrics"])?;
    let mut served = 0;
    for line in metrics.lines() {
        if line.starts_with("apiserver_request_total{") && line.contains("resource=\"tokenreviews\"") {
            let value = line.rsplit(' ').next().unwrap_or_default();
            served += value.parse::<f64>().with_context(|| format!("metric line {line:?}"))? as u64;
        }
    }
    Ok(served)
}

/// Issue #10 finding 6: one relay JWT plus a new garbage cluster token per request once
/// cost the apiserver one TokenReview per request. The agent's per-caller review rate
/// (`reviews_per_caller_per_minute`, default 60, also the burst) bounds them.
pub fn passthrough_reviews_are_bounded_per_caller(tb: &Testbed, _: &Deployment) -> Result<()> {
    const THREADS: usize = 30;
    const PER_THREAD: usize = 10;
    const BURST: u64 = 60;
    // Other tests running beside this one may review a few tokens of their own.
    const OTHERS: u64 = 20;
    // Its own deployment: the attack spends its caller's review budget.
    let hawser = passthrough_deployment(tb)?;
    let jwt = hawser.issue_token("pt-flood", &["dev"])?;
    let url = format!("{}/clusters/{CLUSTER}/version", hawser.relay_url);
    let before = tokenreviews_served(tb)?;
    let started = Instant::now();
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (url, jwt, ca) = (&url, &jwt, &hawser.relay_ca);
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let garbage = format!("garbage-{t}-{i}-{:016x}", rand::random::<u64>());
                            https::get(
                                url,
                                ca,
                                &[
                                    ("Authorization", &format!("Bearer {jwt}")),
                                    ("Hawser-Cluster-Authorization", &format!("Bearer {garbage}")),
                                ],
                            )
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow::anyhow!("a request thread panicked"))?)
            .collect::<Result<Vec<Vec<_>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let elapsed = started.elapsed();
    let served = tokenreviews_served(tb)? - before;

    let refused = answers.iter().filter(|(status, _)| *status == 401).count();
    let limited: Vec<_> = answers.iter().filter(|(status, _)| *status == 429).collect();
    let others: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != 401 && *status != 429)
        .collect();
    eprintln!(
        "{} requests with garbage cluster tokens in {elapsed:.1?}: {refused} refused (401), {} limited (429); \
         kube-apiserver served {served} TokenReviews",
        answers.len(),
        limited.len()
    );
    // The bucket refills one review per second while the attack lasts.
    let bound = BURST + elapsed.as_secs() + 1 + OTHERS;
    ensure!(
        served <= bound,
        "{} garbage tokens cost kube-apiserver {served} TokenReviews (bound {bound})",
        answers.len()
    );
    ensure!(others.is_empty(), "answers other than 401 and 429: {others:?}");
    ensure!(refused > 0, "no garbage token was reviewed and refused");
    // Two limits answer 429: the agent's reviews per caller, and the relay's failed
    // authentications per source, which the agent's refusals of cluster tokens now feed.
    let (by_agent, by_relay): (Vec<_>, Vec<_>) = limited
        .iter()
        .copied()
        .partition(|(_, body)| body.contains("reviews_per_caller_per_minute"));
    ensure!(
        by_relay
            .iter()
            .all(|(_, body)| body.contains("too many failed authentications")),
        "a 429 that names neither limit: {by_relay:?}"
    );
    ensure!(
        !by_relay.is_empty(),
        "refused cluster tokens were not charged to the source's failed-authentication budget \
         ({} limited by the agent only)",
        by_agent.len()
    );

    // Another caller's review budget is its own: once its source's failure budget has a token
    // again (one a second), its cluster token is reviewed and used.
    let ns = tb.namespace("pt-flood")?;
    let sa_token = tb.service_account_token(&ns, "deployer")?;
    let other = hawser.issue_token("pt-bystander", &["dev"])?;
    wait_for(
        "another caller to get through after the flood",
        Duration::from_secs(20),
        || {
            let (status, body) = https::get(
                &url,
                &hawser.relay_ca,
                &[
                    ("Authorization", &format!("Bearer {other}")),
                    ("Hawser-Cluster-Authorization", &format!("Bearer {sa_token}")),
                ],
            )?;
            match status {
                200 => Ok(Some(())),
                429 if body.contains("too many failed authentications") => Ok(None),
                _ => anyhow::bail!("another caller after the flood: {status} {body}"),
            }
        },
    )
}
