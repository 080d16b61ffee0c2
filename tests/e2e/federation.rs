//! CI federation (issue #15): a CI job's ID token from a real OpenID provider is a caller when
//! its claims pass the issuer's `required_claims`, mapped to a Kubernetes user and groups with
//! prefixes; at the relay and again at the agent; a key rotation at the provider is picked up
//! without a restart; every mismatch is a 401 Status naming what was wrong.

use std::fs;
use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::Value;

use crate::support::hawser::{CLUSTER, Extra, Hawser, Trust, cluster_audience};
use crate::support::idp::{Idp, IdpOptions, User, jwt_part};
use crate::support::process::wait_for;
use crate::support::{Kubectl, Testbed, https};
use crate::tunnel::{whoami, whoami_groups};

/// A federation test.
pub type Test = fn(&Testbed) -> Result<()>;

/// Every federation test, by name.
pub const TESTS: &[(&str, Test)] = &[
    (
        "a_ci_token_whose_claims_match_reaches_the_cluster_as_its_mapped_identity",
        a_ci_token_whose_claims_match_reaches_the_cluster_as_its_mapped_identity,
    ),
    (
        "a_ci_token_with_a_wrong_claim_audience_or_issuer_gets_a_401_status",
        a_ci_token_with_a_wrong_claim_audience_or_issuer_gets_a_401_status,
    ),
    (
        "the_agent_checks_the_claims_again_with_callers_own_tokens",
        the_agent_checks_the_claims_again_with_callers_own_tokens,
    ),
    (
        "a_key_rotation_at_the_provider_is_picked_up_without_a_restart",
        a_key_rotation_at_the_provider_is_picked_up_without_a_restart,
    ),
];

/// The audience a job asks its token for (GitHub: `core.getIDToken('hawser-ci')`).
const CI_AUDIENCE: &str = "hawser-ci";
const REPOSITORY: &str = "org/app";
const MAIN: &str = "refs/heads/main";

/// A CI provider: the test provider's CI endpoint mints the job tokens; nobody logs in.
fn ci_provider() -> Result<Idp> {
    Idp::start(&IdpOptions {
        users: &[User("nobody", "unused", &[])],
        ..IdpOptions::default()
    })
}

/// The `[[issuers]]` entry of a CI provider, as docs/ci.md gives it for GitHub Actions.
fn ci_issuer(idp: &Idp, audience: &str, rules: &str) -> String {
    format!(
        r#"
[[issuers]]
issuer = "{issuer}"
audiences = ["{audience}"]
jwks_url = "{issuer}keys"
jwks_ca_file = "{ca}"
username_prefix = "ci:"
groups_claim = ["repository", "environment"]
groups_prefix = "ci:"
[issuers.required_claims]
{rules}
"#,
        issuer = idp.issuer,
        ca = idp.ca.display(),
    )
}

const RULES: &str = "repository = \"org/app\"\nref = [\"refs/heads/main\", \"refs/tags/v*\"]\n";

/// A job's claims, as GitHub Actions sets them, on `git_ref`.
fn job_claims(git_ref: &str) -> Vec<(&'static str, String)> {
    vec![
        ("sub", format!("repo:{REPOSITORY}:ref:{git_ref}")),
        ("repository", REPOSITORY.to_owned()),
        ("repository_owner", "org".to_owned()),
        ("ref", git_ref.to_owned()),
        ("environment", "production".to_owned()),
    ]
}

fn ci_token(idp: &Idp, audience: &str, claims: &[(&'static str, String)]) -> Result<String> {
    let pairs: Vec<(&str, &str)> = claims.iter().map(|(k, v)| (*k, v.as_str())).collect();
    idp.ci_token(audience, &pairs)
}

/// kubectl through the relay with `token` (as a job does: a token file and the exec plugin).
fn kubectl_with(hawser: &Hawser, token: &str, name: &str) -> Result<Kubectl> {
    let token_file = hawser.unique_path(&format!("{name}.token"));
    fs::write(&token_file, token)?;
    hawser.kubeconfig_with(&hawser.relay_url, CLUSTER, &token_file, name)
}

/// A deployment trusting the CI provider with [`RULES`], the CI group admitted to the cluster.
fn ci_deployment(tb: &Testbed, idp: &Idp) -> Result<Hawser> {
    let relay = format!("{CI_ACCESS}{}", ci_issuer(idp, CI_AUDIENCE, RULES));
    Hawser::start_with(
        tb,
        &Extra {
            relay: &relay,
            caller_prefix: "local:",
            ..Extra::default()
        },
    )
}

/// A GET through the relay with `token`: the status code and the Status message.
fn refusal(hawser: &Hawser, token: &str) -> Result<(u16, String)> {
    let url = format!("{}/clusters/{CLUSTER}/api/v1/namespaces", hawser.relay_url);
    let (code, body) = https::get(&url, &hawser.relay_ca, &[("Authorization", &format!("Bearer {token}"))])?;
    // An agent's answer comes chunked through the minimal client: take the JSON inside.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(start), Some(end)) => &body[start..=end],
        _ => "",
    };
    let status: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    ensure!(
        status["kind"] == "Status" || code == 200,
        "a refusal must be a Kubernetes Status, got {code}: {body}"
    );
    Ok((code, status["message"].as_str().unwrap_or_default().to_owned()))
}

/// Lets the CI group read pods and config maps in `namespace` (a role of its own: the test
/// bed runs no controller manager to fill the aggregated `view` role).
fn bind_reader(tb: &Testbed, namespace: &str) -> Result<()> {
    tb.admin().create_or_exists(&[
        "create",
        "clusterrole",
        "ci-reader",
        "--verb=get,list,watch",
        "--resource=pods,configmaps",
    ])?;
    tb.bind_group_role(namespace, "ci-reader", "ci:org/app")
}

/// The relay admits the CI group to the test bed's cluster.
const CI_ACCESS: &str = "[[access]]\nclusters = [\"testbed\"]\ngroups = [\"ci:org/app\"]\n";

fn a_ci_token_whose_claims_match_reaches_the_cluster_as_its_mapped_identity(tb: &Testbed) -> Result<()> {
    let idp = ci_provider()?;
    let hawser = ci_deployment(tb, &idp)?;
    let ns = tb.namespace("ci")?;
    bind_reader(tb, &ns)?;

    for (name, git_ref) in [("main", MAIN), ("tag", "refs/tags/v1.4.0")] {
        let job = kubectl_with(&hawser, &ci_token(&idp, CI_AUDIENCE, &job_claims(git_ref))?, name)?;
        let user = whoami(&job, &[])?;
        ensure!(
            user["username"] == format!("ci:repo:{REPOSITORY}:ref:{git_ref}"),
            "the job is its mapped sub: {user}"
        );
        let groups = whoami_groups(&user);
        ensure!(
            groups.contains(&"ci:org/app") && groups.contains(&"ci:production"),
            "the job's groups come from repository and environment, prefixed: {groups:?}"
        );
        // RBAC decides: pods and config maps in its namespace, not secrets.
        job.ok(&["get", "configmaps", "-n", &ns])?;
        let secrets = job.run(&["get", "secrets", "-n", &ns])?;
        ensure!(
            !secrets.status.success() && String::from_utf8_lossy(&secrets.stderr).contains("Forbidden"),
            "the reader role does not read secrets: {}",
            String::from_utf8_lossy(&secrets.stderr)
        );
    }
    Ok(())
}

fn a_ci_token_with_a_wrong_claim_audience_or_issuer_gets_a_401_status(tb: &Testbed) -> Result<()> {
    let idp = ci_provider()?;
    let stranger = ci_provider()?;
    let hawser = ci_deployment(tb, &idp)?;

    let feature = ci_token(&idp, CI_AUDIENCE, &job_claims("refs/heads/feature"))?;
    let other_repo = {
        let mut claims = job_claims(MAIN);
        claims[1].1 = "org/app-fork".to_owned();
        ci_token(&idp, CI_AUDIENCE, &claims)?
    };
    let no_ref = {
        let claims: Vec<_> = job_claims(MAIN).into_iter().filter(|(k, _)| *k != "ref").collect();
        ci_token(&idp, CI_AUDIENCE, &claims)?
    };
    let cases = [
        ("a ref the rules do not allow", feature, "claim \"ref\" does not match"),
        ("another repository", other_repo, "claim \"repository\" does not match"),
        ("no ref claim", no_ref, "required claim \"ref\" is missing"),
        (
            "a token for another audience",
            ci_token(&idp, "sts.amazonaws.com", &job_claims(MAIN))?,
            "audience is not accepted",
        ),
        (
            "a token of an issuer the relay does not trust",
            ci_token(&stranger, CI_AUDIENCE, &job_claims(MAIN))?,
            "issuer is not trusted",
        ),
    ];
    for (what, token, says) in cases {
        let (code, message) = refusal(&hawser, &token)?;
        ensure!(
            code == 401 && message.contains(says),
            "{what}: {code} {message:?}, wanted 401 saying {says:?}"
        );
        ensure!(
            !message.contains("feature") && !message.contains("app-fork"),
            "{what}: the refusal echoes a claim value: {message}"
        );
        // kubectl shows it as a failed authentication, never as another identity.
        let out = kubectl_with(&hawser, &token, "refused")?.run(&["auth", "whoami"])?;
        ensure!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
            "{what}: kubectl {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A relay without [login] says so at its login path.
    let url = format!("{}/.well-known/hawser/login", hawser.relay_url);
    let (code, body) = https::get(&url, &hawser.relay_ca, &[])?;
    ensure!(code == 404 && body.contains("[login]"), "no [login]: {code} {body}");
    // And the job on main is in.
    let (code, _) = refusal(&hawser, &ci_token(&idp, CI_AUDIENCE, &job_claims(MAIN))?)?;
    ensure!(
        code == 200 || code == 403,
        "the job on main was refused at the relay: {code}"
    );
    Ok(())
}

fn the_agent_checks_the_claims_again_with_callers_own_tokens(tb: &Testbed) -> Result<()> {
    let idp = ci_provider()?;
    let audience = cluster_audience(CLUSTER);
    // The relay's entry asks only for the repository; the agent's for the ref too: a token
    // from a branch passes the relay and must be refused by the agent.
    let relay = format!(
        "{CI_ACCESS}{}",
        ci_issuer(&idp, &audience, "repository = \"org/app\"\n")
    );
    let agent = ci_issuer(&idp, &audience, RULES);
    let hawser = Hawser::start_with(
        tb,
        &Extra {
            relay: &relay,
            agent: &agent,
            trust: Trust::CallerTokens,
            caller_prefix: "local:",
            ..Extra::default()
        },
    )?;
    let ns = tb.namespace("ci-agent")?;
    bind_reader(tb, &ns)?;

    let main = kubectl_with(&hawser, &ci_token(&idp, &audience, &job_claims(MAIN))?, "main")?;
    main.ok(&["get", "configmaps", "-n", &ns])?;

    let branch = ci_token(&idp, &audience, &job_claims("refs/heads/feature"))?;
    let (code, message) = refusal(&hawser, &branch)?;
    ensure!(
        code == 401 && message.contains("claim \"ref\" does not match"),
        "the agent must refuse what its rules refuse: {code} {message}"
    );
    // The refusal is the agent's: its audit trail holds it.
    let audit = fs::read_to_string(hawser.dir().join("agent-audit.log"))?;
    ensure!(
        audit
            .lines()
            .any(|l| l.contains("\"status\":401") && l.contains("\"path\":\"/api/v1/namespaces\"")),
        "the agent's audit trail has no 401 for the branch's request:\n{audit}"
    );
    Ok(())
}

fn a_key_rotation_at_the_provider_is_picked_up_without_a_restart(tb: &Testbed) -> Result<()> {
    let idp = ci_provider()?;
    let hawser = ci_deployment(tb, &idp)?;
    let before = ci_token(&idp, CI_AUDIENCE, &job_claims(MAIN))?;
    let (code, message) = refusal(&hawser, &before)?;
    ensure!(code == 200 || code == 403, "before the rotation: {code} {message}");

    let kid = idp.rotate_key()?;
    let after = ci_token(&idp, CI_AUDIENCE, &job_claims(MAIN))?;
    ensure!(
        jwt_part(&after, 0)?["kid"] == kid.as_str(),
        "the provider signs with its new key"
    );
    // The relay fetches the provider's keys again when it meets an unknown kid (at most once per
    // 10 s): within a few seconds the new key is trusted, with neither process restarted.
    wait_for("the relay to trust the rotated key", Duration::from_secs(30), || {
        let (code, _) = refusal(&hawser, &after)?;
        Ok((code != 401).then_some(()))
    })?;
    // The old key stays published, so tokens signed before the rotation still pass.
    let (code, message) = refusal(&hawser, &before)?;
    ensure!(code != 401, "a token of the old key: {code} {message}");
    Ok(())
}
