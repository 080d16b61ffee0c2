//! Each rule of the agent chart's ClusterRole is needed: with any one removed, the agent's
//! start-up check names what is missing.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::helm::{AGENT, Helm, Release};
use super::pod::Agent;
use super::{CLUSTER, hawser, install, work_dir};
use crate::support::Testbed;
use crate::support::net::free_port;
use crate::support::process::wait_for;

/// With mode `both` and an issuer that maps uids, an extra (`scopes`) and system names, the
/// chart's ClusterRole has six rules and the agent checks each at start. On a control plane of
/// its own, without the `system:basic-user` binding (which grants every user
/// selfsubjectaccessreviews, so the chart's own rule would be invisible), the whole role gives
/// both "may" lines; then, for each rule, the role without it makes the agent name exactly it.
pub fn each_rule_of_the_agent_role_is_named_when_missing() -> Result<()> {
    let tb = Testbed::start()?;
    tb.admin().ok(&["delete", "clusterrolebinding", "system:basic-user"])?;
    let (helm, namespace, dir) = (Helm::new()?, tb.namespace("charts-rbac")?, work_dir("charts-rbac")?);
    let values = json!({
        "cluster": CLUSTER,
        "mode": "both",
        "token": {"value": "an agent token (no relay listens: only the start-up check matters)"},
        "relayCA": std::fs::read_to_string(&tb.pki.ca_cert)?,
        "config": {
            "relay": {"address": format!("127.0.0.1:{}", free_port()?), "server_name": "localhost"},
            "assertions": null,
            "issuers": [{
                "issuer": "https://issuer.example",
                "audiences": [CLUSTER],
                "jwks": jwks(dir.path())?,
                "uid_claim": "uid",
                "extra_claims": {"scopes": "scp"},
                "allow_system_names": true,
            }],
        },
    });
    let release = "hawser-agent";
    let rendered = install(
        &helm,
        &tb,
        &Release {
            chart: AGENT,
            name: release,
            namespace: &namespace,
        },
        "agent-rbac",
        &values,
    )?;
    let account = format!("system:serviceaccount:{namespace}:{release}");
    let role = rendered.one("ClusterRole")?.clone();
    let rules = role["rules"].as_array().context("no rules")?.clone();
    // What the agent must say when a rule is missing, by the rule's resources.
    let expected = |rule: &Value| -> Result<Vec<String>> {
        let resources: Vec<&str> = rule["resources"]
            .as_array()
            .context("a rule without resources")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let verb = rule["verbs"][0].as_str().context("a rule without verbs")?;
        Ok(match resources[..] {
            ["selfsubjectaccessreviews"] => vec![
                "could not check the agent's impersonation rights".into(),
                "selfsubjectaccessreviews".into(),
            ],
            ["tokenreviews"] => vec!["cannot review cluster tokens".into(), "create tokenreviews".into()],
            _ => std::iter::once("lacks these rights".to_owned())
                .chain(resources.iter().map(|r| format!("{verb} {r}")))
                .collect(),
        })
    };
    ensure!(
        rules.len() == 6,
        "the role for mode both with such an issuer has {} rules, not 6: {role}",
        rules.len()
    );

    for removed in std::iter::once(None).chain((0..rules.len()).map(Some)) {
        let mut partial = role.clone();
        partial["rules"] = Value::Array(
            rules
                .iter()
                .enumerate()
                .filter(|&(i, _)| Some(i) != removed)
                .map(|(_, r)| r.clone())
                .collect(),
        );
        tb.admin()
            .ok_with_stdin(&["apply", "-f", "-"], partial.to_string().as_bytes())?;
        // RBAC's cache follows the role: wait until it says what the role says.
        for (i, rule) in rules.iter().enumerate() {
            let allowed = Some(i) != removed;
            for resource in rule["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let verb = rule["verbs"][0].as_str().unwrap_or("");
                let group = rule["apiGroups"][0].as_str().unwrap_or("");
                wait_for(
                    &format!(
                        "RBAC to {} {verb} {group}/{resource}",
                        if allowed { "allow" } else { "deny" }
                    ),
                    Duration::from_secs(30),
                    || Ok((can_i(&tb, &account, verb, group, resource)? == allowed).then_some(())),
                )?;
            }
        }
        let name = match removed {
            None => "agent-whole-role".to_owned(),
            Some(i) => format!("agent-without-rule-{i}"),
        };
        let mut agent = Agent::start(
            &tb,
            dir.path(),
            &name,
            &rendered,
            (&namespace, release, "hawser-agent-0"),
            free_port()?,
        )?;
        match removed {
            None => {
                agent.wait_for_line(&["the agent may impersonate what its issuers map"])?;
                agent.wait_for_line(&["the agent may review passthrough cluster tokens"])?;
                let log = agent.logged();
                ensure!(
                    !log.contains("lacks") && !log.contains("could not check") && !log.contains("cannot review"),
                    "the whole role left something missing: {}",
                    agent.log.display()
                );
            }
            Some(i) => {
                let says = expected(&rules[i])?;
                let line = agent.wait_for_line(&says.iter().map(String::as_str).collect::<Vec<_>>())?;
                // Only that rule: every other right the agent checks is there.
                for (j, other) in rules.iter().enumerate().filter(|&(j, _)| j != i) {
                    for right in expected(other)?.iter().skip(1) {
                        ensure!(
                            !line.contains(right.as_str()),
                            "without rule {i} the agent also named {right} (rule {j}): {line}"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether RBAC allows service account `user` (`system:serviceaccount:NS:NAME`) `verb` on
/// `group`/`resource` (`userextras/KEY`: the subresource KEY), by a SubjectAccessReview (kubectl
/// auth can-i cannot name resources discovery does not list, such as uids).
fn can_i(tb: &Testbed, user: &str, verb: &str, group: &str, resource: &str) -> Result<bool> {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let namespace = user.split(':').nth(2).unwrap_or("");
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": subresource},
        },
    });
    let allowed = tb.admin().ok_with_stdin(
        &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
        review.to_string().as_bytes(),
    )?;
    Ok(allowed.trim() == "true")
}

/// A JWKS of a fresh key (`hawser token issue --signing-key --generate`, then `hawser token jwks`).
fn jwks(dir: &std::path::Path) -> Result<String> {
    let key = dir.join("issuer.key").display().to_string();
    hawser(&[
        "token",
        "issue",
        "--signing-key",
        &key,
        "--generate",
        "--issuer",
        "https://issuer.example",
        "--audience",
        CLUSTER,
        "--subject",
        "nobody",
    ])?;
    hawser(&["token", "jwks", "--signing-key", &key])
}
