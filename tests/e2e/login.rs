//! People log in with their own identity provider (issue #15): `hawser login` in a browser (the
//! test submits the real provider's login form) or with a device code, then kubectl through the
//! exec plugin or `hawser proxy` as the provider's user and groups, refreshed before expiry;
//! an expired login or a provider that is down fails with one line, never another identity.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::support::hawser::{CLUSTER, Extra, Hawser};
use crate::support::idp::{CLIENT_ID, Idp, IdpOptions, User, jwt_part};
use crate::support::process::{run_with_deadline, wait_for};
use crate::support::{Testbed, binaries::binaries, https};
use crate::tunnel::{whoami, whoami_groups};

mod person;
use person::Person;

/// A login test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every login test, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "a_browser_login_gives_kubectl_the_providers_user_and_groups_until_logout",
        a_browser_login_gives_kubectl_the_providers_user_and_groups_until_logout,
    ),
    (
        "a_device_login_serves_hawser_proxy_without_a_token_file",
        a_device_login_serves_hawser_proxy_without_a_token_file,
    ),
    (
        "the_exec_plugin_refreshes_the_id_token_and_tells_kubectl_its_expiry",
        the_exec_plugin_refreshes_the_id_token_and_tells_kubectl_its_expiry,
    ),
    (
        "an_expired_refresh_token_or_a_provider_down_fails_with_one_line",
        an_expired_refresh_token_or_a_provider_down_fails_with_one_line,
    ),
    (
        "a_login_to_a_wrong_or_unreachable_issuer_says_why",
        a_login_to_a_wrong_or_unreachable_issuer_says_why,
    ),
];

const USERS: &[User] = &[
    User("alice", "alice-password", &["dev", "ops"]),
    User("bob", "bob-password", &["dev"]),
];

const BROWSER_PROMPT: &str = "Open this URL to log in: ";
const DEVICE_PROMPT: &str = "To log in, visit ";
const WITHIN: Duration = Duration::from_secs(60);
/// The lifetime of the short ID tokens some tests ask for, plus a second.
const SHORT: u64 = 21;

fn provider(id_token_lifetime: &str, refresh_token_lifetime: &str) -> Result<Idp> {
    Idp::start(&IdpOptions {
        users: USERS,
        id_token_lifetime,
        refresh_token_lifetime,
    })
}

/// A relay and agent that trust the provider's ID tokens for the `hawser` client, as
/// docs/configuration.md shows, and publish it as their `[login]`; the provider's `dev` group
/// reaches the test bed.
fn deployment(tb: &Testbed, idp: &Idp) -> Result<Hawser> {
    let relay = format!(
        r#"
[[access]]
clusters = ["{CLUSTER}"]
groups = ["oidc:dev"]
[[issuers]]
issuer = "{issuer}"
audiences = ["{CLIENT_ID}"]
jwks_url = "{issuer}keys"
jwks_ca_file = "{ca}"
username_prefix = "oidc:"
groups_prefix = "oidc:"
[login]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
"#,
        issuer = idp.issuer,
        ca = idp.ca.display(),
    );
    Hawser::start_with(
        tb,
        &Extra {
            relay: &relay,
            caller_prefix: "local:",
            ..Extra::default()
        },
    )
}

/// A path as the `&str` a command line takes.
pub(crate) fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// The ExecCredential `hawser token` printed: token and expiry (Unix seconds).
fn credential(out: &Output) -> Result<(String, u64)> {
    ensure!(
        out.status.success(),
        "hawser token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let credential: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        credential["kind"] == "ExecCredential",
        "not an ExecCredential: {credential}"
    );
    let token = credential["status"]["token"]
        .as_str()
        .context("no status.token")?
        .to_owned();
    let stamp = credential["status"]["expirationTimestamp"]
        .as_str()
        .context("no status.expirationTimestamp: kubectl would not know when to ask again")?;
    let expiry = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)?;
    let exp = jwt_part(&token, 1)?["exp"]
        .as_u64()
        .context("the ID token has no exp")?;
    ensure!(
        expiry.unix_timestamp() as u64 == exp,
        "expirationTimestamp {stamp} is not the token's exp {exp}"
    );
    Ok((token, exp))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One line on stderr saying `says`, and a failure exit.
fn one_line_failure(out: &Output, says: &str) -> Result<String> {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    ensure!(
        !out.status.success(),
        "it succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(
        out.stdout.is_empty(),
        "a failure printed a credential: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(
        stderr.lines().count() == 1 && stderr.contains(says),
        "wanted one line saying {says:?}, got: {stderr}"
    );
    Ok(stderr)
}

fn a_browser_login_gives_kubectl_the_providers_user_and_groups_until_logout(tb: &Testbed) -> Result<()> {
    let idp = provider("1h", "5h")?;
    let hawser = deployment(tb, &idp)?;
    let ns = tb.namespace("oidc")?;
    let elsewhere = tb.namespace("oidc-not")?;
    tb.bind_group_role(&ns, "cluster-admin", "oidc:ops")?;

    // The relay tells `hawser login` and `hawser kubeconfig` which provider and client.
    let (code, body) = https::get(
        &format!("{}/.well-known/hawser/login", hawser.relay_url),
        &hawser.relay_ca,
        &[],
    )?;
    let published: Value = serde_json::from_str(body.trim())?;
    ensure!(
        code == 200 && published["issuer"] == idp.issuer.as_str() && published["client_id"] == CLIENT_ID,
        "the relay's [login]: {code} {body}"
    );
    let alice = Person::new()?;
    alice.login_at(&idp, Some(&hawser), false, "alice", "alice-password")?;
    let files = alice.login_files()?;
    ensure!(files.len() == 1, "one stored login: {files:?}");
    let mode = fs::metadata(&files[0])?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the stored login is mode {mode:o}, not 0600");

    let kubectl = alice.kubectl_at(&hawser, &idp, true)?;
    for kubectl in [kubectl.clone(), kubectl.with_bin(&binaries()?.kubectl_1_32)] {
        let user = whoami(&kubectl, &[])?;
        ensure!(
            user["username"] == "oidc:alice",
            "kubectl is the provider's user: {user}"
        );
        let groups = whoami_groups(&user);
        ensure!(
            groups.contains(&"oidc:dev") && groups.contains(&"oidc:ops"),
            "the provider's groups, prefixed: {groups:?}"
        );
    }
    // RBAC decides: alice's group is admin in one namespace only.
    kubectl.ok(&["get", "pods", "-n", &ns])?;
    let denied = kubectl.run(&["get", "pods", "-n", &elsewhere])?;
    ensure!(
        !denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("Forbidden"),
        "alice listed pods in {elsewhere}: {}",
        String::from_utf8_lossy(&denied.stderr)
    );

    let mut logout = vec!["logout"];
    logout.extend(["--issuer", &idp.issuer, "--client-id", CLIENT_ID]);
    let out = run_with_deadline(alice.hawser(&logout), None, WITHIN)?;
    ensure!(
        out.status.success(),
        "hawser logout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(alice.login_files()?.is_empty(), "logout left the login behind");
    one_line_failure(&alice.token(&idp)?, "not logged in")?;
    let out = kubectl.run(&["auth", "whoami"])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not logged in"),
        "kubectl after logout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn a_device_login_serves_hawser_proxy_without_a_token_file(tb: &Testbed) -> Result<()> {
    // ID tokens live 20 s: the proxy must refresh before the first one expires.
    let idp = provider("20s", "5h")?;
    let hawser = deployment(tb, &idp)?;
    let bob = Person::new()?;
    bob.login(&idp, true, "bob", "bob-password")?;

    let (_proxy, kubectl) = bob.proxy(&hawser, &idp)?;
    let user = whoami(&kubectl, &[])?;
    ensure!(
        user["username"] == "oidc:bob",
        "through the proxy, kubectl is bob: {user}"
    );
    let groups = whoami_groups(&user);
    ensure!(
        groups.contains(&"oidc:dev") && !groups.contains(&"oidc:ops"),
        "bob's groups: {user}"
    );
    let first_exp = now() + SHORT;
    wait_for("the first ID token to expire", Duration::from_secs(40), || {
        Ok((now() > first_exp).then_some(()))
    })?;
    let user = whoami(&kubectl, &[])?;
    ensure!(
        user["username"] == "oidc:bob",
        "through the proxy after the first token expired: {user}"
    );
    Ok(())
}

fn the_exec_plugin_refreshes_the_id_token_and_tells_kubectl_its_expiry(tb: &Testbed) -> Result<()> {
    // ID tokens live 20 s: every one kubectl gets is within the plugin's refresh margin.
    let idp = provider("20s", "5h")?;
    let hawser = deployment(tb, &idp)?;
    let alice = Person::new()?;
    alice.login(&idp, false, "alice", "alice-password")?;
    let kubectl = alice.kubectl(&hawser, &idp)?;

    let (first, first_exp) = credential(&alice.token(&idp)?)?;
    ensure!(
        whoami(&kubectl, &[])?["username"] == "oidc:alice",
        "kubectl works at once"
    );
    wait_for("the first ID token to expire", Duration::from_secs(40), || {
        Ok((now() > first_exp).then_some(()))
    })?;
    // The relay refuses the old token now; kubectl, through the plugin, never sees that.
    let url = format!("{}/clusters/{CLUSTER}/version", hawser.relay_url);
    let (code, body) = https::get(&url, &hawser.relay_ca, &[("Authorization", &format!("Bearer {first}"))])?;
    ensure!(
        code == 401 && body.contains("expired"),
        "the first token after its exp: {code} {body}"
    );
    ensure!(
        whoami(&kubectl, &[])?["username"] == "oidc:alice",
        "kubectl after the first token expired"
    );
    let (second, second_exp) = credential(&alice.token(&idp)?)?;
    ensure!(
        second != first && second_exp > first_exp,
        "the plugin hands out a fresh token"
    );
    ensure!(jwt_part(&second, 1)?["sub"] == "alice", "the same person");
    Ok(())
}

fn an_expired_refresh_token_or_a_provider_down_fails_with_one_line(tb: &Testbed) -> Result<()> {
    // The login ends 8 s after it began; ID tokens live 20 s, inside the refresh margin, so
    // every use refreshes.
    let idp = provider("20s", "8s")?;
    let hawser = deployment(tb, &idp)?;
    let alice = Person::new()?;
    alice.login(&idp, false, "alice", "alice-password")?;
    let kubectl = alice.kubectl(&hawser, &idp)?;
    let (_proxy, proxied) = alice.proxy(&hawser, &idp)?;
    let stderr = wait_for("the refresh token to expire", Duration::from_secs(30), || {
        let out = alice.token(&idp)?;
        if out.status.success() {
            return Ok(None);
        }
        one_line_failure(&out, "has expired").map(Some)
    })?;
    ensure!(stderr.contains("hawser login"), "the error says what to do: {stderr}");
    let out = kubectl.run(&["auth", "whoami", "-o", "json"])?;
    let text = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && text.contains("has expired")
            && !String::from_utf8_lossy(&out.stdout).contains("oidc:"),
        "kubectl with an expired login: {text}"
    );
    // The proxy answers 401 (the same line in its Status), never a request as alice.
    let out = proxied.run(&["auth", "whoami", "-o", "json"])?;
    let text = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && (text.contains("Unauthorized") || text.contains("has expired"))
            && !String::from_utf8_lossy(&out.stdout).contains("oidc:"),
        "kubectl through the proxy with an expired login: {text}"
    );

    // Provider down at refresh: another person's fresh login, then the provider stops.
    let mut idp = provider("20s", "5h")?;
    let bob = Person::new()?;
    bob.login(&idp, false, "bob", "bob-password")?;
    let (_proxy, proxied) = bob.proxy(&hawser, &idp)?;
    idp.stop();
    one_line_failure(&bob.token(&idp)?, "cannot refresh the login to")?;
    let out = proxied.run(&["auth", "whoami", "-o", "json"])?;
    ensure!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("oidc:"),
        "kubectl through the proxy with the provider down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(hawser);
    Ok(())
}

fn a_login_to_a_wrong_or_unreachable_issuer_says_why(_tb: &Testbed) -> Result<()> {
    let idp = provider("1h", "5h")?;
    let person = Person::new()?;
    // The issuer without its trailing slash is another issuer: discovery must say so.
    let trimmed = idp.issuer.trim_end_matches('/');
    let args = [
        "login",
        "--issuer",
        trimmed,
        "--client-id",
        CLIENT_ID,
        "--ca-file",
        path_str(&idp.ca),
        "--no-browser",
    ];
    let out = run_with_deadline(person.hawser(&args), None, WITHIN)?;
    one_line_failure(&out, "issuer")?;

    let port = crate::support::net::free_port()?;
    let nowhere = format!("https://127.0.0.1:{port}/");
    let args = ["login", "--issuer", &nowhere, "--client-id", CLIENT_ID, "--no-browser"];
    let out = run_with_deadline(person.hawser(&args), None, WITHIN)?;
    one_line_failure(&out, &nowhere)?;
    ensure!(person.login_files()?.is_empty(), "a failed login stored something");
    Ok(())
}
