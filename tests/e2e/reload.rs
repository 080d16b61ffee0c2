//! Configuration reload (issue #14): relay and agent re-read their files on SIGHUP and when the
//! content changes (a ConfigMap's symlink swap included), apply what can change live without
//! dropping tunnels or exchanges in flight, and refuse an invalid file with its file and line.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::routes::Deployment;
use crate::support::hawser::{CLUSTER, Hawser};
use crate::support::process::wait_for;
use crate::support::{Testbed, https};

/// A reload test.
pub type Test = fn(&Testbed, &Deployment) -> Result<()>;

/// Every reload test, by name.
pub const TESTS: &[(&str, Test)] = &[
    ("sighup_applies_an_access_rule", sighup_applies_an_access_rule),
    (
        "a_file_change_applies_a_limit_and_a_watch_in_flight_survives",
        a_file_change_applies_a_limit_and_a_watch_in_flight_survives,
    ),
    (
        "a_configmap_symlink_swap_is_picked_up",
        a_configmap_symlink_swap_is_picked_up,
    ),
    (
        "an_invalid_file_is_refused_with_its_line_and_the_old_config_serves",
        an_invalid_file_is_refused_with_its_line_and_the_old_config_serves,
    ),
    (
        "a_removed_cluster_closes_its_tunnel",
        a_removed_cluster_closes_its_tunnel,
    ),
    (
        "a_rotated_agent_token_disconnects_the_old_and_the_agent_returns_with_the_new",
        a_rotated_agent_token_disconnects_the_old_and_the_agent_returns_with_the_new,
    ),
    ("an_agent_side_change_is_applied", an_agent_side_change_is_applied),
    (
        "an_agent_trust_model_change_is_refused_and_its_tunnel_serves_on",
        an_agent_trust_model_change_is_refused_and_its_tunnel_serves_on,
    ),
];

const WITHIN: Duration = Duration::from_secs(30);

/// GET `path` on the test bed's cluster through the relay with `token`: the status.
fn status(hawser: &Hawser, path: &str, token: &str) -> Result<u16> {
    let url = format!("{}/clusters/{CLUSTER}{path}", hawser.relay_url);
    Ok(https::get(&url, &hawser.relay_ca, &[("Authorization", &format!("Bearer {token}"))])?.0)
}

/// The lines of `file` in the deployment's directory that contain every one of `words`.
fn lines_with(hawser: &Hawser, file: &str, words: &[&str]) -> usize {
    let text = std::fs::read_to_string(hawser.dir().join(file)).unwrap_or_default();
    text.lines().filter(|l| words.iter().all(|w| l.contains(w))).count()
}

/// Waits until `file` has more lines with all of `words` than `before`.
fn wait_line(hawser: &Hawser, file: &str, words: &[&str], before: usize) -> Result<()> {
    wait_for(&format!("{file}: a line with {words:?}"), WITHIN, || {
        Ok((lines_with(hawser, file, words) > before).then_some(()))
    })
}

/// Runs `change`, then waits until `log` says the configuration was reloaded by `trigger`
/// (`SIGHUP` or `file changed`) once more.
fn reloaded_by(hawser: &Hawser, log: &str, trigger: &str, change: impl FnOnce() -> Result<()>) -> Result<()> {
    let words = ["configuration reloaded", trigger];
    let before = lines_with(hawser, log, &words);
    change()?;
    wait_line(hawser, log, &words, before)
}

/// Replaces `path` at once (written beside it, then renamed), as editors and tools do.
fn replace_file(path: &Path, text: &str) -> Result<()> {
    let scratch = path.with_extension("toml.new");
    std::fs::write(&scratch, text)?;
    std::fs::rename(&scratch, path)?;
    Ok(())
}

/// The relay's configuration file, rewritten by `change`, put in place at once.
fn change_relay(hawser: &Hawser, change: impl FnOnce(String) -> String) -> Result<()> {
    let path = hawser.dir().join("relay.toml");
    replace_file(&path, &change(std::fs::read_to_string(&path)?))
}

const OPS_RULE: &str = "\n[[access]]\nclusters = [\"testbed\"]\ngroups = [\"ops\"]\n";

/// Inserts `text` before the first `[[clusters]]` table (so it is not read as part of another).
fn before_clusters(config: String, text: &str) -> String {
    config.replacen("[[clusters]]", &format!("{text}\n[[clusters]]"), 1)
}

/// Checks that group `ops` is refused, applies `change` (reloaded by `trigger`), then that the
/// rule it added lets `ops` in.
fn lets_ops_in(hawser: &Hawser, trigger: &str, change: impl FnOnce() -> Result<()>) -> Result<()> {
    let ops = hawser.issue_token("ops-user", &["ops"])?;
    ensure!(
        status(hawser, "/version", &ops)? == 403,
        "no rule lets group ops in yet"
    );
    reloaded_by(hawser, "relay.log", trigger, change)?;
    let got = status(hawser, "/version", &ops)?;
    ensure!(got == 200, "the new access rule lets group ops in: got {got}");
    Ok(())
}

fn sighup_applies_an_access_rule(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    // Written in place (no rename), then the signal: the reload it makes is logged as SIGHUP's.
    lets_ops_in(&hawser, "SIGHUP", || {
        hawser.rewrite_relay_config(|text| before_clusters(text, OPS_RULE))?;
        hawser.hup_relay()
    })
}

fn a_file_change_applies_a_limit_and_a_watch_in_flight_survives(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    let admin = hawser.issue_token("hawser-admin", &[])?;
    let ns = tb.namespace("reload-limit")?;
    tb.set_value(&ns, "watched", "one")?;
    let mut watch = kubectl.watch_values(&ns, "watched")?;
    watch.wait_for_line("the initial value", WITHIN, |l| l == "one")?;
    ensure!(
        status(&hawser, "/version", &admin)? == 200,
        "a second exchange is allowed"
    );

    // No signal: the file's new content alone is the reload.
    reloaded_by(&hawser, "relay.log", "file changed", || {
        change_relay(&hawser, |text| {
            format!("{text}\n[limits]\nmax_streams_per_caller = 1\n")
        })
    })?;
    // The watch holds the caller's one slot now allowed; another exchange is refused.
    let got = status(&hawser, "/version", &admin)?;
    ensure!(got == 429, "the new per-caller limit applies: got {got}");
    // The watch admitted before the reload goes on.
    tb.set_value(&ns, "watched", "two")?;
    watch.wait_for_line("a change after the reload", WITHIN, |l| l == "two")?;
    Ok(())
}

fn a_configmap_symlink_swap_is_picked_up(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let dir = hawser.dir();
    let config = std::fs::read_to_string(dir.join("relay.toml"))?;
    // The kubelet's layout for a mounted ConfigMap: FILE -> ..data/FILE, ..data -> ..TIMESTAMP.
    let publish = |version: &str, text: &str| -> Result<()> {
        std::fs::create_dir(dir.join(version))?;
        std::fs::write(dir.join(version).join("relay.toml"), text)?;
        std::os::unix::fs::symlink(version, dir.join("..data_tmp"))?;
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
        Ok(())
    };
    publish("..2026_12_01_20_00_00.1", &config)?;
    std::os::unix::fs::symlink("..data/relay.toml", dir.join("relay.toml.link"))?;
    std::fs::rename(dir.join("relay.toml.link"), dir.join("relay.toml"))?;

    lets_ops_in(&hawser, "file changed", || {
        publish("..2026_12_01_20_01_00.2", &before_clusters(config, OPS_RULE))
    })
}

fn an_invalid_file_is_refused_with_its_line_and_the_old_config_serves(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let admin = hawser.issue_token("hawser-admin", &[])?;
    // Issued first: `hawser token issue` reads the relay's file too.
    let ops = hawser.issue_token("ops-user", &["ops"])?;
    let config = std::fs::read_to_string(hawser.dir().join("relay.toml"))?;
    // A broken line right after the rule that would let group ops in.
    let broken = before_clusters(config, &format!("{OPS_RULE}this is not toml\n"));
    let line = broken.lines().position(|l| l == "this is not toml").map(|i| i + 1);
    let at = format!("relay.toml:{}:", line.unwrap_or(0));
    replace_file(&hawser.dir().join("relay.toml"), &broken)?;
    wait_line(&hawser, "relay.log", &["reload refused", &at], 0)?;
    // Nothing of the file applied (the rule before the bad line neither), the old one serves.
    ensure!(
        status(&hawser, "/version", &ops)? == 403,
        "the refused file's rule applied"
    );
    ensure!(
        status(&hawser, "/version", &admin)? == 200,
        "the running config stopped serving"
    );
    // A file that parses but does not validate is refused too, naming the file.
    let invalid = before_clusters(
        std::fs::read_to_string(hawser.dir().join("relay.toml"))?.replace("this is not toml\n", ""),
        "[[clusters]]\nname = \"Not A Name\"\nagent_token_sha256 = \"00\"\n",
    );
    replace_file(&hawser.dir().join("relay.toml"), &invalid)?;
    wait_line(&hawser, "relay.log", &["reload refused", "relay.toml", "Not A Name"], 0)?;
    ensure!(
        status(&hawser, "/version", &admin)? == 200,
        "the running config stopped serving"
    );
    Ok(())
}

/// Removes the `[[clusters]]` table of the test bed's cluster (three lines: name, digest, and
/// its audience line, empty with relay assertions).
fn without_testbed_cluster(text: &str) -> String {
    let start = text
        .find(&format!("[[clusters]]\nname = \"{CLUSTER}\""))
        .unwrap_or(text.len());
    let end = text[start..]
        .find("\n[[clusters]]")
        .map_or(text.len(), |i| start + i + 1);
    format!("{}{}", &text[..start], &text[end..])
}

fn a_removed_cluster_closes_its_tunnel(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let admin = hawser.issue_token("hawser-admin", &[])?;
    change_relay(&hawser, |text| without_testbed_cluster(&text))?;
    wait_line(&hawser, "relay-audit.log", &["\"agent_revoked\"", "\"agent-e2e\""], 0)?;
    let got = status(&hawser, "/version", &admin)?;
    ensure!(got == 404, "a removed cluster is unknown: got {got}");
    // The agent's tunnel was closed with the relay's reason, and its return is refused.
    wait_for("the agent to be refused on its return", WITHIN, || {
        Ok(hawser.agent_logged("wrong agent token")?.then_some(()))
    })?;
    Ok(())
}

fn a_rotated_agent_token_disconnects_the_old_and_the_agent_returns_with_the_new(
    tb: &Testbed,
    _: &Deployment,
) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let admin = hawser.issue_token("hawser-admin", &[])?;
    let old = std::fs::read_to_string(hawser.dir().join("agent-token"))?;
    let new = format!("{old}-rotated");
    // The Secret first (the agent reads it at its next dial), then the relay drops the old digest.
    replace_file(&hawser.dir().join("agent-token"), &new)?;
    let registered = lines_with(&hawser, "relay-audit.log", &["\"agent_registered\"", "\"agent-e2e\""]);
    change_relay(&hawser, |text| {
        text.replace(
            &hawser::relay::token_digest_hex(&old),
            &hawser::relay::token_digest_hex(&new),
        )
    })?;
    wait_line(&hawser, "relay-audit.log", &["\"agent_revoked\"", "\"agent-e2e\""], 0)?;
    wait_line(
        &hawser,
        "relay-audit.log",
        &["\"agent_registered\"", "\"agent-e2e\""],
        registered,
    )?;
    wait_for("the cluster to answer again", WITHIN, || {
        Ok((status(&hawser, "/version", &admin)? == 200).then_some(()))
    })?;
    Ok(())
}

fn an_agent_side_change_is_applied(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let admin = hawser.issue_token("hawser-admin", &[])?;
    ensure!(status(&hawser, "/version", &admin)? == 200, "served before the change");
    let config = std::fs::read_to_string(hawser.agent_config())?;
    // Passthrough only: a caller without a cluster token is now refused by the agent; its audit
    // goes to a new file; a new backoff needs a restart and is named as such.
    let changed = config
        .replace("output = \"agent-audit.log\"", "output = \"agent-audit-2.log\"")
        .replace("max_backoff_ms = 2000", "max_backoff_ms = 3000")
        .replace("token_file = ", "mode = \"passthrough\"\ntoken_file = ");
    reloaded_by(&hawser, "agent.log", "file changed", || {
        replace_file(hawser.agent_config(), &changed)
    })?;
    ensure!(
        lines_with(&hawser, "agent.log", &["take effect only at a restart", "reconnect"]) == 1,
        "the agent names the one restart-only change"
    );
    let got = status(&hawser, "/version", &admin)?;
    ensure!(
        got == 403,
        "passthrough only refuses a caller without a cluster token: got {got}"
    );
    wait_line(&hawser, "agent-audit-2.log", &["\"status\":403"], 0)?;
    Ok(())
}

fn an_agent_trust_model_change_is_refused_and_its_tunnel_serves_on(tb: &Testbed, _: &Deployment) -> Result<()> {
    let hawser = Hawser::start(tb)?;
    let admin = hawser.issue_token("hawser-admin", &[])?;
    // Another assertion issuer: the relay was told the old one at the hello, so this needs a
    // restart; nothing of the file applies, not even the audit output beside it.
    let config = std::fs::read_to_string(hawser.agent_config())?;
    let changed = config
        .replace("/assertions\"", "/other-assertions\"")
        .replace("output = \"agent-audit.log\"", "output = \"agent-audit-2.log\"");
    ensure!(
        changed.contains("/other-assertions"),
        "the agent's file has no assertion issuer"
    );
    replace_file(hawser.agent_config(), &changed)?;
    wait_line(&hawser, "agent.log", &["reload refused", "restart the agent"], 0)?;
    ensure!(
        status(&hawser, "/version", &admin)? == 200,
        "the running agent stopped serving"
    );
    ensure!(
        !hawser.dir().join("agent-audit-2.log").exists(),
        "a part of the refused file was applied"
    );
    Ok(())
}
