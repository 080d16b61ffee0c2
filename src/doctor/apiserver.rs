//! The apiserver's checks, with the agent's own credential (its kubeconfig, or the pod's service
//! account): `GET /version`, then SelfSubjectAccessReviews for the rights its mode needs —
//! `impersonate` on users and groups (uids and extra keys where its issuers map them, service
//! accounts where callers may have `system:` names), and
//! `create tokenreviews` where callers bring their own cluster tokens (`passthrough`, `both`).

use std::error::Error as StdError;
use std::time::Instant;

use super::Check;
use crate::agent::apiserver::{ApiCallError, Apiserver};
use crate::config::AgentConfig;

const APISERVER: &str = "apiserver";
const IMPERSONATION: &str = "impersonation rights";
const TOKENREVIEW: &str = "tokenreview rights";
/// Its lines, in order.
pub(super) const CHECKS: &[&str] = &[APISERVER, IMPERSONATION, TOKENREVIEW];

/// The apiserver's line and the two rights lines.
pub(super) async fn check(config: &AgentConfig) -> Vec<Check> {
    let rights_skipped = |needed: &str| vec![Check::needs(IMPERSONATION, needed), Check::needs(TOKENREVIEW, needed)];
    let apiserver = match Apiserver::from_config(&config.apiserver) {
        Ok(apiserver) => apiserver,
        Err(e) => {
            let mut lines = vec![Check::fail(
                APISERVER,
                e.to_string(),
                "set apiserver.kubeconfig to a kubeconfig whose current context names the apiserver, its CA \
                 and a credential: token, tokenFile, or client-certificate and client-key (or run the agent \
                 in a pod with a service account)",
            )];
            lines.extend(rights_skipped("the apiserver"));
            return lines;
        }
    };
    let base = apiserver.base().to_string();
    let base = base.trim_end_matches('/');
    let credential = apiserver.credential();
    let started = Instant::now();
    let version = apiserver.call(http::Method::GET, "/version", None).await;
    let took = started.elapsed();
    let version = match version {
        Ok(version) => version,
        Err(e) => {
            let (detail, fix) = failure(&e, base, &credential);
            let mut lines = vec![Check::fail(APISERVER, detail, fix).took(took)];
            lines.extend(rights_skipped("the apiserver"));
            return lines;
        }
    };
    let release = version["gitVersion"].as_str().unwrap_or("(no gitVersion)");
    let mut lines = vec![
        Check::ok(
            APISERVER,
            format!("{base} answered GET /version: {release}, as {credential}"),
        )
        .took(took),
    ];

    lines.push(if config.mode.allows_identity() {
        let impersonates = config.impersonates();
        let mut rights = vec!["users".to_owned(), "groups".to_owned()];
        if impersonates.uids {
            rights.push("uids".into());
        }
        rights.extend(impersonates.extra_keys.iter().map(|key| format!("userextras/{key}")));
        if impersonates.service_accounts {
            rights.push("serviceaccounts".into());
        }
        rights_line(
            IMPERSONATION,
            apiserver.missing_impersonation_rights(&impersonates).await,
            format!("may impersonate {}", rights.join(", ")),
            "grant the agent's credential verb impersonate on users and groups (core group), on uids and \
             userextras/KEY in authentication.k8s.io where its issuers map them, on serviceaccounts with \
             allow_system_names (docs/configuration.md, The agent's credential)",
            base,
            &credential,
        )
    } else {
        Check::skip(
            IMPERSONATION,
            "not needed (mode = \"passthrough\": callers' own tokens)",
        )
    });
    lines.push(if config.mode.allows_passthrough() {
        rights_line(
            TOKENREVIEW,
            apiserver.missing_passthrough_rights().await,
            "may create tokenreviews (passthrough cluster tokens are reviewed)".into(),
            "grant the agent's credential create on tokenreviews.authentication.k8s.io (the ClusterRole \
             system:auth-delegator has it), or set mode = \"identity\"",
            base,
            &credential,
        )
    } else {
        Check::skip(
            TOKENREVIEW,
            "not needed (mode = \"identity\": no caller brings a cluster token)",
        )
    });
    lines
}

/// A rights line: `ok` with what is granted, or `FAIL` naming what is missing and how to grant it.
fn rights_line(
    name: &'static str,
    missing: Result<Vec<String>, ApiCallError>,
    granted: String,
    grant: &str,
    base: &str,
    credential: &str,
) -> Check {
    match missing {
        Ok(missing) if missing.is_empty() => Check::ok(name, granted),
        Ok(missing) => Check::fail(
            name,
            format!("the agent's credential may not {}", missing.join(", ")),
            grant,
        ),
        Err(e) => {
            let (detail, fix) = failure(&e, base, credential);
            Check::fail(name, format!("asking the apiserver: {detail}"), fix)
        }
    }
}

/// What a failed request to the apiserver means, and what to change.
fn failure(e: &ApiCallError, base: &str, credential: &str) -> (String, String) {
    let server = "the kubeconfig's server (apiserver.kubeconfig), or KUBERNETES_SERVICE_HOST/PORT in a pod";
    match e {
        ApiCallError::Request(cause) => {
            if let Some(tls) = find::<rustls::Error>(cause) {
                return (
                    format!("{base}: TLS: {tls}"),
                    "the kubeconfig's certificate-authority (in a pod: the service account's ca.crt) must sign \
                     the apiserver's certificate, for the server's name"
                        .into(),
                );
            }
            let refused = find::<std::io::Error>(cause).map(std::io::Error::kind);
            let fix = match refused {
                Some(std::io::ErrorKind::ConnectionRefused) => format!("nothing listens there: check {server}"),
                _ => format!("check {server} and the network to it"),
            };
            (format!("{base}: {e}"), fix)
        }
        ApiCallError::Status { status, .. } if status.as_u16() == 401 => (
            format!("{base} refused the agent's credential ({credential}): {e}"),
            "a token must be current, not revoked and for this cluster (the kubeconfig user's token or \
             tokenFile; in a pod, the service account token); a client certificate must be valid now and \
             signed by the CA of the apiserver's --client-ca-file: renew it"
                .into(),
        ),
        ApiCallError::Timeout => (format!("{base}: {e}"), format!("check {server} and the network to it")),
        e => (format!("{base}: {e}"), format!("check {server}")),
    }
}

/// The first cause of type `T` in `e`'s chain, looking inside I/O errors (TLS and connection
/// errors travel wrapped in them).
fn find<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(cause) = next {
        if let Some(found) = cause.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = cause.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref)
            && let Some(found) = find::<T>(inner)
        {
            return Some(found);
        }
        next = cause.source();
    }
    None
}
