//! The baseline suite: what kubectl must be able to do against a cluster.
//! Setup (namespaces, pods, log lines) goes straight to the test bed as its
//! administrator; every action under test goes through the route's kubectl,
//! so the same suite proves a tunnel by swapping the route.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::routes::Route;
use crate::support::process::wait_for;
use crate::support::{Kubectl, PodSpec, Testbed, net};

/// A baseline test: the test bed for setup, the route for kubectl.
pub type Test = fn(&Testbed, &dyn Route) -> Result<()>;

/// Every baseline test, by name.
pub const TESTS: &[(&str, Test)] = &[
    ("version_reports_pinned_release", version_reports_pinned_release),
    ("get_raw_reaches_the_apiserver", get_raw_reaches_the_apiserver),
    ("apply_get_delete", apply_get_delete),
    ("watch_sees_change", watch_sees_change),
    ("logs_follow", logs_follow),
    ("ctrl_c_cancels_at_the_kubelet", ctrl_c_cancels_at_the_kubelet),
    ("exec_websocket", exec_websocket),
    ("exec_spdy", exec_spdy),
    ("attach_websocket", attach_websocket),
    ("attach_spdy", attach_spdy),
    ("cp_roundtrip", cp_roundtrip),
    ("port_forward_websocket", port_forward_websocket),
    ("port_forward_spdy", port_forward_spdy),
    ("list_2000_configmaps", list_2000_configmaps),
    ("rbac_namespace_scoped", rbac_namespace_scoped),
    ("auth_whoami", auth_whoami),
];

/// Deadline for a line a long-running kubectl should print.
const LINE_DEADLINE: Duration = Duration::from_secs(30);

fn version_reports_pinned_release(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let (kubectl, _) = route.admin(tb)?;
    let version: Value = serde_json::from_str(&kubectl.ok(&["version", "-o", "json"])?)?;
    let pinned = crate::support::binaries::pinned_kubernetes_version()?;
    ensure!(
        version["serverVersion"]["gitVersion"] == pinned.as_str(),
        "server version {} is not {pinned}",
        version["serverVersion"]
    );
    let client = route.kubectl_version()?;
    ensure!(
        version["clientVersion"]["gitVersion"] == client.as_str(),
        "kubectl version {} is not {client}",
        version["clientVersion"]
    );
    Ok(())
}

/// `kubectl get --raw` builds its URL from the server's host alone in kubectl before 1.34
/// (kubernetes #131165), so a route must serve the cluster at its server URL's root or keep the
/// path some other way; the project's kubectl keeps it, `hawser proxy` serves at the root.
fn get_raw_reaches_the_apiserver(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let (kubectl, _) = route.admin(tb)?;
    let version: Value = serde_json::from_str(&kubectl.ok(&["get", "--raw", "/version"])?)?;
    let pinned = crate::support::binaries::pinned_kubernetes_version()?;
    ensure!(
        version["gitVersion"] == pinned.as_str(),
        "get --raw /version answered {version}"
    );
    let pods: Value =
        serde_json::from_str(&kubectl.ok(&["get", "--raw", "/api/v1/namespaces/default/pods?limit=1"])?)?;
    ensure!(pods["kind"] == "PodList", "get --raw of a list answered {pods}");
    Ok(())
}

fn apply_get_delete(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let ns = tb.namespace("apply")?;
    let (kubectl, _) = route.admin(tb)?;
    let config_map = |color: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": ns}, "data": {"color": color}})
            .to_string()
    };
    let get_color = || -> Result<Value> {
        let got: Value =
            serde_json::from_str(&kubectl.ok(&["get", "configmap", "settings", "-n", &ns, "-o", "json"])?)?;
        Ok(got["data"]["color"].clone())
    };

    let out = kubectl.ok_with_stdin(&["apply", "-f", "-"], config_map("blue").as_bytes())?;
    ensure!(out.contains("configmap/settings created"), "apply said: {out}");
    ensure!(get_color()? == "blue");

    let out = kubectl.ok_with_stdin(&["apply", "-f", "-"], config_map("green").as_bytes())?;
    ensure!(
        out.contains("configmap/settings configured"),
        "second apply said: {out}"
    );
    ensure!(get_color()? == "green");

    let out = kubectl.ok(&["delete", "configmap", "settings", "-n", &ns])?;
    ensure!(out.contains("deleted"), "delete said: {out}");
    let gone = kubectl.run(&["get", "configmap", "settings", "-n", &ns])?;
    let stderr = String::from_utf8_lossy(&gone.stderr);
    ensure!(
        !gone.status.success() && stderr.contains("NotFound"),
        "deleted configmap still answered: {stderr}"
    );
    Ok(())
}

fn watch_sees_change(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let ns = tb.namespace("watch")?;
    tb.set_value(&ns, "watched", "one")?;
    let (kubectl, _) = route.admin(tb)?;
    let mut watch = kubectl.watch_values(&ns, "watched")?;
    watch.wait_for_line("the initial value", LINE_DEADLINE, |l| l == "one")?;
    tb.set_value(&ns, "watched", "two")?;
    watch.wait_for_line("the changed value", LINE_DEADLINE, |l| l == "two")?;
    Ok(())
}

fn logs_follow(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let ns = tb.namespace("logs")?;
    tb.running_pod(&ns, "logger", &PodSpec::default())?;
    tb.append_log(&ns, "logger", "main", "first line\n")?;
    let (kubectl, _) = route.admin(tb)?;
    let mut logs = kubectl.spawn(&["logs", "-f", "-n", &ns, "logger"])?;
    logs.wait_for_line("the line written before", LINE_DEADLINE, |l| l == "first line")?;
    tb.append_log(&ns, "logger", "main", "second line\n")?;
    logs.wait_for_line("the line appended while following", LINE_DEADLINE, |l| {
        l == "second line"
    })?;
    Ok(())
}

/// Stopping kubectl during `logs -f` ends the stream at the far end: the
/// cancellation crosses every hop (relay and agent included) to the kubelet.
fn ctrl_c_cancels_at_the_kubelet(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let ns = tb.namespace("cancel")?;
    tb.running_pod(&ns, "follower", &PodSpec::default())?;
    tb.append_log(&ns, "follower", "main", "started\n")?;
    let (kubectl, _) = route.admin(tb)?;
    let mut logs = kubectl.spawn(&["logs", "-f", "-n", &ns, "follower"])?;
    logs.wait_for_line("the first line", LINE_DEADLINE, |l| l == "started")?;
    let closed = format!("logs: follow of {ns}/follower/main closed");
    ensure!(
        !tb.kubelet_log().contains(&closed),
        "the follow ended before kubectl did"
    );
    logs.interrupt()?;
    wait_for(
        "the kubelet to see the follow cancelled",
        Duration::from_secs(20),
        || Ok(tb.kubelet_log().contains(&closed).then_some(())),
    )
}

fn exec_websocket(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let (kubectl, _) = route.admin(tb)?;
    exec_roundtrip(
        tb,
        &kubectl.with_env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "true"),
        "websocket",
    )
}

fn exec_spdy(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let (kubectl, _) = route.admin(tb)?;
    exec_roundtrip(
        tb,
        &kubectl.with_env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
        "spdy",
    )
}

/// stdin reaches the command, stdout and stderr come back apart, and the exit code reaches kubectl.
fn exec_roundtrip(tb: &Testbed, kubectl: &Kubectl, protocol: &str) -> Result<()> {
    let ns = tb.namespace(&format!("exec-{protocol}"))?;
    tb.running_pod(&ns, "shell", &PodSpec::default())?;
    let input = pattern(256 * 1024);
    let out = kubectl.run_with_stdin(
        &[
            "exec",
            "-i",
            "-n",
            &ns,
            "shell",
            "-v=7",
            "--",
            "sh",
            "-c",
            "cat; echo to-stderr >&2; exit 3",
        ],
        &input,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(3),
        "exec exited {} instead of 3; stderr: {stderr}",
        out.status
    );
    ensure!(
        out.stdout == input,
        "stdout differs from stdin: {} bytes back of {}",
        out.stdout.len(),
        input.len()
    );
    ensure!(
        stderr.contains("to-stderr"),
        "the command's stderr did not reach kubectl: {stderr}"
    );
    ensure_protocol(&stderr, "/exec?", protocol)
}

fn attach_websocket(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let (kubectl, _) = route.admin(tb)?;
    attach_roundtrip(
        tb,
        &kubectl.with_env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "true"),
        "websocket",
    )
}

fn attach_spdy(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let (kubectl, _) = route.admin(tb)?;
    attach_roundtrip(
        tb,
        &kubectl.with_env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
        "spdy",
    )
}

/// `kubectl attach -i` reaches the container's running process: a line on
/// stdin comes back from its stdout, and attach ends when the process does.
fn attach_roundtrip(tb: &Testbed, kubectl: &Kubectl, protocol: &str) -> Result<()> {
    let ns = tb.namespace(&format!("attach-{protocol}"))?;
    // The process lingers a second after answering: when it exits the instant it has written, the
    // attach can end before its last output reaches the client (seen about once in 300 runs, on
    // the direct route too, so in the test bed, not in Hawser). The answer still has to cross.
    let command = ["sh", "-c", "read line; echo got:$line; sleep 1"]
        .map(String::from)
        .to_vec();
    tb.running_pod(&ns, "attached", &PodSpec { command, stdin: true })?;
    let out = kubectl.run_with_stdin(&["attach", "-i", "-n", &ns, "attached", "-v=7"], b"hello\n")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "attach failed ({}): {stderr}", out.status);
    ensure!(
        stdout.contains("got:hello"),
        "the process's answer did not come back: {stdout:?}; kubectl said:\n{stderr}\nthe kubelet said:\n{}",
        tb.kubelet_log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    ensure_protocol(&stderr, "/attach?", protocol)
}

/// `kubectl cp` (tar over exec) into the pod and back, byte for byte.
fn cp_roundtrip(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let ns = tb.namespace("cp")?;
    tb.running_pod(&ns, "files", &PodSpec::default())?;
    let (kubectl, _) = route.admin(tb)?;
    // The test kubelet's "containers" share this machine's filesystem.
    let dir = tempfile::tempdir()?;
    let original = pattern(300 * 1024);
    let source = dir.path().join("source.bin");
    std::fs::write(&source, &original)?;
    let in_pod = dir.path().join("in-pod.bin");
    let back = dir.path().join("back.bin");
    let (source, in_pod_s, back_s) = (
        source.display().to_string(),
        in_pod.display().to_string(),
        back.display().to_string(),
    );
    kubectl.ok(&["cp", &source, &format!("{ns}/files:{in_pod_s}")])?;
    ensure!(
        std::fs::read(&in_pod)? == original,
        "the file copied into the pod differs"
    );
    kubectl.ok(&["cp", &format!("{ns}/files:{in_pod_s}"), &back_s])?;
    ensure!(std::fs::read(&back)? == original, "the file copied back differs");
    Ok(())
}

/// Whether a line of kubectl's `-v=7` log is the request line of a `verb` request whose URL
/// contains `url_part`. kubectl 1.37 logs `"Request" verb="GET" url="…"`, kubectl 1.32
/// `round_trippers.go:NNN] GET https://…`.
fn logged_request(line: &str, verb: &str, url_part: &str) -> bool {
    line.contains(url_part) && (line.contains(&format!("verb=\"{verb}\"")) || line.contains(&format!("] {verb} http")))
}

/// Reads kubectl's `-v=7` log to tell which protocol carried the stream:
/// a WebSocket upgrade (GET with a subprotocol) or SPDY (POST). A failed
/// WebSocket attempt followed by the SPDY fallback counts as a failure.
fn ensure_protocol(kubectl_log: &str, subresource: &str, protocol: &str) -> Result<()> {
    let websocket = kubectl_log.contains("Sec-Websocket-Protocol:");
    let spdy = kubectl_log.lines().any(|l| logged_request(l, "POST", subresource));
    let used = match (websocket, spdy) {
        (true, false) => "websocket",
        (false, true) => "spdy",
        (true, true) => "websocket, then the spdy fallback",
        (false, false) => "no stream upgrade kubectl logged",
    };
    ensure!(used == protocol, "kubectl {subresource} used {used}, not {protocol}");
    Ok(())
}

fn port_forward_websocket(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let (kubectl, _) = route.admin(tb)?;
    port_forward_roundtrip(
        tb,
        &kubectl.with_env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "true"),
        "websocket",
    )
}

fn port_forward_spdy(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let (kubectl, _) = route.admin(tb)?;
    port_forward_roundtrip(
        tb,
        &kubectl.with_env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
        "spdy",
    )
}

/// 10 MiB through `kubectl port-forward` to an echo server and back, byte for byte.
fn port_forward_roundtrip(tb: &Testbed, kubectl: &Kubectl, protocol: &str) -> Result<()> {
    const SIZE: usize = 10 * 1024 * 1024;
    let ns = tb.namespace(&format!("forward-{protocol}"))?;
    tb.running_pod(&ns, "server", &PodSpec::default())?;
    let echo_port = net::echo_server()?;
    let (forward, local_port) = kubectl.port_forward(&ns, "pod/server", echo_port, &["-v=7"])?;

    let data = pattern(SIZE);
    let mut conn = TcpStream::connect(("127.0.0.1", local_port))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = conn.try_clone()?;
    let sent = data.clone();
    let sender = thread::spawn(move || writer.write_all(&sent));
    let mut received = vec![0u8; SIZE];
    conn.read_exact(&mut received)
        .with_context(|| format!("reading the echo back ({protocol})"))?;
    sender.join().expect("writer thread")?;
    ensure!(received == data, "echoed bytes differ from the bytes sent");
    ensure_protocol(&forward.stderr(), "/portforward", protocol)
}

fn list_2000_configmaps(tb: &Testbed, route: &dyn Route) -> Result<()> {
    const COUNT: usize = 2000;
    let ns = tb.namespace("list")?;
    let items: Vec<Value> = (0..COUNT)
        .map(|i| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i:04}")}, "data": {"i": i.to_string()}}))
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    tb.admin()
        .ok_with_stdin(&["create", "-n", &ns, "-f", "-"], list.as_bytes())?;

    let (kubectl, _) = route.admin(tb)?;
    // kubectl's own paging (chunks of 500).
    let names = kubectl.ok(&["get", "configmaps", "-n", &ns, "-o", "name"])?;
    let listed = names.lines().filter(|l| l.starts_with("configmap/cm-")).count();
    ensure!(listed == COUNT, "kubectl get listed {listed} of {COUNT} configmaps");
    // One unpaged LIST. `--chunk-size=0`, not `get --raw`: kubectl before 1.34 sends `get --raw`
    // to the server URL's root (kubernetes #131165), which misses a relay's /clusters/NAME.
    let (json, log) = kubectl.ok_with_log(&["get", "configmaps", "-n", &ns, "--chunk-size=0", "-o", "json", "-v=7"])?;
    let list: Value = serde_json::from_str(&json)?;
    let items = list["items"].as_array().map_or(0, |i| i.len());
    let path = format!("/api/v1/namespaces/{ns}/configmaps");
    let lists: Vec<&str> = log.lines().filter(|l| logged_request(l, "GET", &path)).collect();
    ensure!(
        lists.len() == 1 && !lists[0].contains("limit="),
        "expected one unpaged LIST, kubectl logged: {lists:#?}"
    );
    ensure!(items == COUNT, "one LIST returned {items} of {COUNT} configmaps");
    Ok(())
}

fn rbac_namespace_scoped(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let allowed = tb.namespace("rbac-allowed")?;
    let other = tb.namespace("rbac-other")?;
    let (kubectl, user) = route.restricted(tb, &allowed)?;
    kubectl.ok(&["create", "configmap", "mine", "-n", &allowed, "--from-literal=a=b"])?;
    kubectl.ok(&["get", "configmap", "mine", "-n", &allowed])?;
    let denied = kubectl.run(&["get", "configmaps", "-n", &other])?;
    let stderr = String::from_utf8_lossy(&denied.stderr);
    ensure!(!denied.status.success(), "listing in {other} was allowed");
    ensure!(
        stderr.contains("(Forbidden)") && stderr.contains(&format!("User \"{user}\"")) && stderr.contains(&other),
        "expected a 403 for {user} in {other}, got: {stderr}"
    );
    Ok(())
}

fn auth_whoami(tb: &Testbed, route: &dyn Route) -> Result<()> {
    let (admin, admin_user) = route.admin(tb)?;
    let me = whoami(&admin)?;
    ensure!(me["username"] == admin_user.as_str(), "admin whoami: {me}");

    let ns = tb.namespace("whoami")?;
    let (restricted, user) = route.restricted(tb, &ns)?;
    let me = whoami(&restricted)?;
    ensure!(me["username"] == user.as_str(), "restricted whoami: {me}");
    let groups = me["groups"].as_array().cloned().unwrap_or_default();
    ensure!(
        groups.iter().any(|g| g == "system:authenticated"),
        "groups lack system:authenticated: {me}"
    );
    ensure!(
        !groups.iter().any(|g| g == "system:masters"),
        "restricted user is in system:masters: {me}"
    );
    Ok(())
}

fn whoami(kubectl: &Kubectl) -> Result<Value> {
    let review: Value = serde_json::from_str(&kubectl.ok(&["auth", "whoami", "-o", "json"])?)?;
    Ok(review["status"]["userInfo"].clone())
}

/// Deterministic pseudo-random bytes, so reordering or loss is visible.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
