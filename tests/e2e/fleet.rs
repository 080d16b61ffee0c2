//! Relays as a fleet (issue #12): a shared registry in a real etcd, requests forwarded one hop
//! to the relay that holds the cluster's agent, and what happens when a relay dies.

mod drain;
mod races;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::support::Testbed;
use crate::support::binaries::binaries;
use crate::support::fleet::{Fleet, LEASE_TTL_SECS};
use crate::support::https;
use crate::support::process::wait_for;

/// A fleet test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every fleet test, by name.
pub const TESTS: &[(&str, Test)] = &[
    ("any_relay_reaches_any_cluster", any_relay_reaches_any_cluster),
    (
        "a_killed_relays_clusters_fail_fast_then_its_entries_vanish",
        a_killed_relays_clusters_fail_fast_then_its_entries_vanish,
    ),
    (
        "behind_nginx_each_cluster_holds_two_relays_and_answers_through_any",
        behind_nginx_each_cluster_holds_two_relays_and_answers_through_any,
    ),
    (
        "behind_nginx_a_killed_relay_leaves_no_cluster_unanswered_past_5s",
        behind_nginx_a_killed_relay_leaves_no_cluster_unanswered_past_5s,
    ),
    (
        "a_rolling_restart_under_load_fails_no_request_and_ends_watches_cleanly",
        a_rolling_restart_under_load_fails_no_request_and_ends_watches_cleanly,
    ),
    (
        "a_watch_through_a_draining_peer_ends_cleanly",
        a_watch_through_a_draining_peer_ends_cleanly,
    ),
    (
        "with_etcd_stopped_known_routes_work_and_registration_resumes_after",
        with_etcd_stopped_known_routes_work_and_registration_resumes_after,
    ),
    (
        "a_relay_that_has_not_read_the_registry_says_so_rather_than_offline",
        races::a_relay_that_has_not_read_the_registry_says_so_rather_than_offline,
    ),
    (
        "two_tunnels_welcomed_by_one_relay_at_once_retire_the_duplicate_not_cut_it",
        races::two_tunnels_welcomed_by_one_relay_at_once_retire_the_duplicate_not_cut_it,
    ),
    (
        "a_drained_relay_and_a_stopped_agent_say_so_and_their_sessions_end_on_record",
        drain::a_drained_relay_and_a_stopped_agent_say_so_and_their_sessions_end_on_record,
    ),
    (
        "a_connection_accepted_before_a_drain_gets_its_first_request_answered",
        drain::a_connection_accepted_before_a_drain_gets_its_first_request_answered,
    ),
];

/// Three relays, two clusters whose agents hold one relay each: every relay reaches both, as
/// the caller (the agent checked the forwarding relay's assertion), and says which relay it
/// forwarded through; the registry holds exactly each relay and each session.
fn any_relay_reaches_any_cluster(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 3, &["alpha", "beta"])?;
    fleet.start_agent("alpha", "agent-alpha", 0)?;
    fleet.start_agent("beta", "agent-beta", 1)?;
    for i in 0..3 {
        for cluster in ["alpha", "beta"] {
            let kubectl = fleet.kubectl(i, cluster)?;
            wait_for(
                &format!("cluster {cluster} to answer through relay-{i}"),
                Duration::from_secs(30),
                || Ok(kubectl.run(&["get", "--raw=/version"])?.status.success().then_some(())),
            )?;
            let user = kubectl.ok(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])?;
            ensure!(
                user == "hawser-admin",
                "through relay-{i} to {cluster}: whoami says {user:?}"
            );
        }
    }
    let forwarded = fleet
        .audit(2)?
        .into_iter()
        .filter(|line| line["cluster"] == "beta" && line["status"] == 200)
        .collect::<Vec<_>>();
    ensure!(!forwarded.is_empty(), "relay-2 audited no request to beta");
    ensure!(
        forwarded.iter().all(|line| line["via"] == "relay-1"),
        "relay-2's audit of beta names relay-1 as the hop: {forwarded:?}"
    );
    let own = fleet.audit(1)?;
    ensure!(
        own.iter()
            .filter(|line| line["cluster"] == "beta")
            .all(|line| line.get("via").is_none()),
        "relay-1 holds beta's tunnel and forwards nothing"
    );
    let keys = fleet.registry_keys()?;
    let expected = [
        "/hawser-e2e/relays/relay-0",
        "/hawser-e2e/relays/relay-1",
        "/hawser-e2e/relays/relay-2",
        "/hawser-e2e/sessions/alpha/relay-0/agent-alpha",
        "/hawser-e2e/sessions/beta/relay-1/agent-beta",
    ];
    ensure!(keys == expected, "registry keys: {keys:?}");
    Ok(())
}

/// SIGKILL the relay that holds a cluster's agent: a request for that cluster through another
/// relay gets a 503 naming the cluster within the open-stream timeout (never a hang), and once
/// the dead relay's lease expires its entries are gone and the cluster is reported offline.
fn a_killed_relays_clusters_fail_fast_then_its_entries_vanish(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 2, &["gamma"])?;
    fleet.start_agent("gamma", "agent-gamma", 1)?;
    let kubectl = fleet.kubectl(0, "gamma")?;
    wait_for("gamma to answer through relay-0", Duration::from_secs(30), || {
        Ok(kubectl.run(&["get", "--raw=/version"])?.status.success().then_some(()))
    })?;
    fleet.kill_relay(1)?;
    let killed = Instant::now();
    let out = kubectl.run(&["get", "--raw=/version", "--request-timeout=30s"])?;
    let took = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "gamma answered with its relay dead");
    ensure!(
        stderr.contains("gamma")
            && (stderr.contains("unavailable") || stderr.contains("ServiceUnavailable") || stderr.contains("503")),
        "a 503 naming the cluster: {stderr}"
    );
    // open_stream_timeout_secs = 3 in the fleet's config, plus kubectl's own start.
    ensure!(took < Duration::from_secs(12), "the failure took {took:?}");
    wait_for(
        "relay-1's registry entries to expire",
        Duration::from_secs(LEASE_TTL_SECS * 3),
        || {
            let keys = fleet.registry_keys()?;
            Ok((!keys.iter().any(|k| k.contains("relay-1"))).then_some(keys))
        },
    )?;
    let out = kubectl.run(&["get", "--raw=/version"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("offline"),
        "with no relay holding it, gamma is offline: {stderr}"
    );
    Ok(())
}

/// Which relays hold each cluster's tunnels, as `hawser clusters --output json` reports them
/// when asked at `url` with the token in `token`.
fn holders(fleet: &Fleet, url: &str, token: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let out = fleet.clusters_at(url, token, &["--output", "json"])?;
    ensure!(
        out.status.success(),
        "hawser clusters: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let overview: hawser::overview::Overview = serde_json::from_slice(&out.stdout).context("hawser clusters")?;
    Ok(overview
        .clusters
        .into_iter()
        .map(|c| {
            let mut relays: Vec<String> = c.agents.into_iter().map(|a| a.relay).collect();
            relays.sort();
            relays.dedup();
            (c.name, relays)
        })
        .collect())
}

/// Status and body of `GET /version` of `cluster` through `url` with the `Authorization` value `bearer`.
fn version(fleet: &Fleet, url: &str, bearer: &str, cluster: &str) -> Result<(u16, String)> {
    https::get(
        &format!("{url}/clusters/{cluster}/version"),
        &fleet.ca_file(),
        &[("Authorization", bearer)],
    )
}

/// Waits until every one of `clusters` has tunnels on two distinct relays, as `hawser clusters`
/// through the balancer reports.
fn wait_for_two_relays_each(n: &BehindNginx, clusters: &[&str]) -> Result<()> {
    wait_for(
        "every cluster's agent to hold tunnels to two relays",
        Duration::from_secs(60),
        || {
            let held = holders(&n.fleet, &n.url, &n.admin)?;
            Ok(clusters
                .iter()
                .all(|c| held.get(*c).is_some_and(|r| r.len() == 2))
                .then_some(()))
        },
    )
}

/// Three relays behind nginx, and agents dialling only nginx.
struct BehindNginx {
    fleet: Fleet,
    _balancer: crate::support::nginx::Balancer,
    /// nginx's URL for callers.
    url: String,
    /// A file holding an admin token.
    admin: PathBuf,
    /// The `Authorization` value of that token.
    bearer: String,
}

/// A fleet of three relays behind nginx and agents of `clusters` dialling only nginx.
fn behind_nginx(tb: &Testbed, clusters: &[&str]) -> Result<BehindNginx> {
    let fleet = Fleet::start(tb, 3, clusters)?;
    let balancer = fleet.balancer()?;
    let address = balancer.tcp_addr().to_string();
    for cluster in clusters {
        // No `connections`: the relay's welcome says it is one of a fleet, so two tunnels.
        fleet.start_agent_at(cluster, &format!("agent-{cluster}"), &address, "")?;
    }
    let admin = fleet.token_file("hawser-admin")?;
    let bearer = format!("Bearer {}", std::fs::read_to_string(&admin)?.trim());
    Ok(BehindNginx {
        fleet,
        _balancer: balancer,
        url: format!("https://{address}"),
        admin,
        bearer,
    })
}

/// Three relays behind nginx, four clusters whose agents dial nginx only: `hawser clusters`
/// shows each cluster on two distinct relays, and 200 kubectl requests through nginx (each
/// kubectl a new connection, so spread over the relays; the test bed's kubectl and 1.32) reach
/// every cluster without a failure, some through a hop. The peer port takes no callers.
fn behind_nginx_each_cluster_holds_two_relays_and_answers_through_any(tb: &Testbed) -> Result<()> {
    let clusters = ["c1", "c2", "c3", "c4"];
    let n = behind_nginx(tb, &clusters)?;
    wait_for_two_relays_each(&n, &clusters)?;
    let fleet = &n.fleet;
    // One thread per cluster, 50 kubectl runs each: the test bed's kubectl for two clusters,
    // the older kubectl 1.32 for the other two (a read of an object: kubectl 1.32 sends
    // `get --raw` to the server's root, docs/testing.md).
    let load: Vec<_> = clusters
        .iter()
        .enumerate()
        .map(|(i, &cluster)| {
            let mut kubectl = fleet.kubectl_at(&n.url, cluster)?;
            if i % 2 == 1 {
                kubectl = kubectl.with_bin(&binaries()?.kubectl_1_32);
            }
            Ok(std::thread::spawn(move || -> Result<()> {
                for i in 0..50 {
                    let out = kubectl.run(&["get", "namespace", "default", "-o", "name"])?;
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    ensure!(
                        out.status.success() && stdout.trim() == "namespace/default",
                        "request {i} to {cluster}: {stdout} {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Ok(())
            }))
        })
        .collect::<Result<_>>()?;
    for thread in load {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a kubectl thread panicked"))??;
    }
    let mut served = Vec::new();
    let mut forwarded = 0;
    for i in 0..3 {
        let lines: Vec<_> = fleet
            .audit(i)?
            .into_iter()
            .filter(|l| l["path"] == "/api/v1/namespaces/default" && l["status"] == 200)
            .collect();
        forwarded += lines.iter().filter(|l| l.get("via").is_some()).count();
        served.push(lines.len());
    }
    ensure!(
        served.iter().sum::<usize>() >= 200,
        "audited requests per relay: {served:?}"
    );
    ensure!(
        served.iter().all(|&n| n > 0),
        "nginx spread the callers over every relay: {served:?}"
    );
    ensure!(
        forwarded > 0,
        "some requests landed on a relay without the cluster's tunnel"
    );
    for ports in &fleet.ports {
        ensure!(
            std::net::TcpStream::connect(("127.0.0.1", ports.peer)).is_err(),
            "the peer link is UDP only: no caller reaches it over TCP"
        );
    }
    Ok(())
}

/// Three relays behind nginx, every cluster on two of them; one relay is killed (SIGKILL: it
/// removes nothing from the registry): every cluster answers through nginx again within 5 s
/// (whichever relay a request lands on, and although the registry still names the dead relay),
/// and its entries are gone within the lease TTL.
fn behind_nginx_a_killed_relay_leaves_no_cluster_unanswered_past_5s(tb: &Testbed) -> Result<()> {
    let clusters = ["k1", "k2", "k3"];
    let n = behind_nginx(tb, &clusters)?;
    wait_for_two_relays_each(&n, &clusters)?;
    let (fleet, url, bearer) = (&n.fleet, &n.url, &n.bearer);
    // Every relay has a pooled peer connection to the one about to die.
    for n in 0..12 {
        let cluster = clusters[n % clusters.len()];
        let (status, body) = version(fleet, url, bearer, cluster)?;
        ensure!(status == 200, "before the kill, {cluster}: {status} {body}");
    }
    fleet.kill_relay(1)?;
    let killed = Instant::now();
    for cluster in clusters {
        wait_for(
            &format!("{cluster} to answer through nginx after the kill"),
            Duration::from_secs(5).saturating_sub(killed.elapsed()),
            || {
                let (status, _) = version(fleet, url, bearer, cluster)?;
                Ok((status == 200).then_some(()))
            },
        )?;
    }
    let answered = killed.elapsed();
    ensure!(
        answered < Duration::from_secs(5),
        "every cluster answered again after {answered:?}"
    );
    wait_for(
        "relay-1's registry entries to expire",
        Duration::from_secs(LEASE_TTL_SECS + 2),
        || Ok((!fleet.registry_keys()?.iter().any(|k| k.contains("relay-1"))).then_some(())),
    )?;
    Ok(())
}

/// Three relays behind nginx under a steady kubectl load: each relay in turn gets SIGTERM, drains
/// (its agents move to other relays first) and comes back, and only then the next. No request of
/// the load fails; a watch through the draining relay ends cleanly (kubectl exits 0), not a hang.
fn a_rolling_restart_under_load_fails_no_request_and_ends_watches_cleanly(tb: &Testbed) -> Result<()> {
    let clusters = ["r1", "r2"];
    let n = behind_nginx(tb, &clusters)?;
    wait_for_two_relays_each(&n, &clusters)?;
    let (fleet, url) = (&n.fleet, &n.url);
    let kubectls = clusters
        .iter()
        .map(|c| fleet.kubectl_at(url, c))
        .collect::<Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = kubectls
        .into_iter()
        .map(|kubectl| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    let out = kubectl.run(&["get", "--raw=/version"])?;
                    ensure!(
                        out.status.success(),
                        "a request failed during the rollout: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut watch = fleet
        .kubectl(0, "r1")?
        .spawn(&["get", "namespaces", "--watch", "--request-timeout=0"])?;
    watch.wait_for_line("the watch's first line", Duration::from_secs(30), |l| {
        l.contains("default")
    })?;
    for i in 0..3 {
        fleet.terminate_relay(i)?;
        if i == 0 {
            let status = watch.wait_exit(Duration::from_secs(10))?;
            ensure!(
                status.success(),
                "the watch through the drained relay ended cleanly: {status} {}",
                watch.stderr()
            );
        }
        fleet.start_relay(i)?;
        wait_for_two_relays_each(&n, &clusters)?;
    }
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
    }
    let done = done.load(Ordering::Relaxed);
    ensure!(done >= 20, "only {done} requests during the rollout");
    Ok(())
}

/// A watch through relay-0 of a cluster whose one agent is on relay-1 rides the peer link; when
/// relay-1 drains, the watch ends cleanly (kubectl exits 0) within seconds, not at relay-1's
/// drain deadline and not with a cut connection.
fn a_watch_through_a_draining_peer_ends_cleanly(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 2, &["w1"])?;
    let one = format!("127.0.0.1:{}", fleet.ports[1].front);
    fleet.start_agent_at("w1", "agent-w1", &one, "connections = 1")?;
    let kubectl = fleet.kubectl(0, "w1")?;
    wait_for("w1 through relay-0", Duration::from_secs(30), || {
        Ok(kubectl.run(&["get", "--raw=/version"])?.status.success().then_some(()))
    })?;
    let mut watch = kubectl.spawn(&["get", "namespaces", "--watch", "--request-timeout=0"])?;
    watch.wait_for_line("the watch's first line", Duration::from_secs(30), |l| {
        l.contains("default")
    })?;
    let pid = fleet.relay_pid(1)?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM {pid}");
    // Well within relay-1's 30 s drain deadline (which would cut it), with room for a busy
    // machine: the agent dials relay-0 before it ends what its old tunnel carries.
    let ended = watch.wait_exit(Duration::from_secs(15))?;
    ensure!(
        ended.success(),
        "the forwarded watch ended cleanly: {ended} {}",
        watch.stderr()
    );
    let audit = fleet.audit(0)?;
    ensure!(
        audit.iter().any(|l| l["verb"] == "watch" && l["via"] == "relay-1"),
        "the watch went through relay-1"
    );
    Ok(())
}

/// etcd stops: a relay still reaches a cluster whose agent another relay holds (the routes it
/// knew), and its `/readyz` fails once etcd has not answered for a lease TTL; etcd back, the
/// relay is ready again and new registrations reach the other relays.
fn with_etcd_stopped_known_routes_work_and_registration_resumes_after(tb: &Testbed) -> Result<()> {
    let fleet = Fleet::start(tb, 2, &["e1", "e2"])?;
    let one = format!("127.0.0.1:{}", fleet.ports[1].front);
    fleet.start_agent_at("e1", "agent-e1", &one, "connections = 1")?;
    let e1 = fleet.kubectl(0, "e1")?;
    wait_for("e1 through relay-0", Duration::from_secs(30), || {
        Ok(e1.run(&["get", "--raw=/version"])?.status.success().then_some(()))
    })?;
    fleet.etcd.stop();
    for _ in 0..3 {
        e1.ok(&["get", "--raw=/version"])?;
    }
    wait_for(
        "relay-0 to report itself not ready",
        Duration::from_secs(LEASE_TTL_SECS * 4),
        || Ok((fleet.readyz(0)? == Some(503)).then_some(())),
    )?;
    e1.ok(&["get", "--raw=/version"])?;
    fleet.etcd.restart()?;
    wait_for("relay-0 to be ready again", Duration::from_secs(30), || {
        Ok((fleet.readyz(0)? == Some(200)).then_some(()))
    })?;
    fleet.start_agent_at("e2", "agent-e2", &one, "connections = 1")?;
    let e2 = fleet.kubectl(0, "e2")?;
    wait_for(
        "e2, registered after etcd came back, through relay-0",
        Duration::from_secs(30),
        || Ok(e2.run(&["get", "--raw=/version"])?.status.success().then_some(())),
    )?;
    let keys = fleet.registry_keys()?;
    ensure!(
        keys.iter().any(|k| k.ends_with("/sessions/e1/relay-1/agent-e1")),
        "relay-1 wrote its sessions again: {keys:?}"
    );
    Ok(())
}
