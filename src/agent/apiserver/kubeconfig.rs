//! The agent's kubeconfig: the current context's server, CA and credential. Credentials are those
//! kube-apiserver authenticates on their own and then lets impersonate: a bearer token (`token`,
//! `tokenFile`) or a client certificate (`client-certificate`/`client-key`, or their `-data`
//! forms, base64 inline), or both as kubectl sends them. Whatever would change how the agent
//! connects or who it is without the agent acting on it (`insecure-skip-tls-verify`, exec
//! plugins, a kubeconfig's own impersonation) is refused with its name, never ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use super::client_cert::{CertSource, ClientCert};
use super::{ApiserverError, Credential, TokenSource};
use crate::token_file::TokenFile;

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<Named<KubeCluster>>,
    #[serde(default)]
    users: Vec<Named<KubeUser>>,
    #[serde(default)]
    contexts: Vec<Named<KubeContext>>,
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct KubeCluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

/// A kubeconfig user; its keys are kebab-case except `tokenFile`, as client-go spells them.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct KubeUser {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
    auth_provider: Option<serde_yaml_ng::Value>,
    username: Option<String>,
    #[serde(rename = "as")]
    impersonate: Option<String>,
    as_groups: Option<serde_yaml_ng::Value>,
    as_uid: Option<String>,
    as_user_extra: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct KubeContext {
    cluster: String,
    user: String,
}

/// What the current context of a kubeconfig says: the server, the CA to trust, the credential.
pub(super) struct Target {
    pub(super) server: String,
    pub(super) roots: rustls::RootCertStore,
    pub(super) credential: Credential,
}

/// Reads the kubeconfig at `path`; relative paths in it are relative to its directory.
pub(super) fn from_kubeconfig(path: &Path) -> Result<Target, ApiserverError> {
    let bad = |m: String| ApiserverError::Config(format!("kubeconfig {}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let kc: Kubeconfig = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let current = kc
        .current_context
        .as_deref()
        .ok_or_else(|| bad("no current-context".into()))?;
    let context = find(&kc.contexts, current).ok_or_else(|| bad(format!("no context {current}")))?;
    let cluster = find(&kc.clusters, &context.cluster).ok_or_else(|| bad(format!("no cluster {}", context.cluster)))?;
    let user = find(&kc.users, &context.user).ok_or_else(|| bad(format!("no user {}", context.user)))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let roots = roots(cluster, base).map_err(|e| match e {
        ApiserverError::Config(m) => bad(m),
        other => other,
    })?;
    let credential = credential(user, base).map_err(|e| match e {
        ApiserverError::Config(m) => bad(format!("user {}: {m}", context.user)),
        other => other,
    })?;
    Ok(Target {
        server: cluster.server.clone(),
        roots,
        credential,
    })
}

fn roots(cluster: &KubeCluster, base: &Path) -> Result<rustls::RootCertStore, ApiserverError> {
    let refuse = |m: &str| Err(ApiserverError::Config(m.to_owned()));
    if cluster.insecure_skip_tls_verify {
        return refuse(
            "the cluster sets insecure-skip-tls-verify: the agent always verifies the apiserver (there is no \
             insecure mode); give certificate-authority or certificate-authority-data",
        );
    }
    if cluster.tls_server_name.is_some() {
        return refuse(
            "the cluster sets tls-server-name, which the agent does not support: use a server URL whose host the certificate names",
        );
    }
    if cluster.proxy_url.is_some() {
        return refuse("the cluster sets proxy-url, which the agent does not support: it dials the apiserver directly");
    }
    Ok(
        match (&cluster.certificate_authority, &cluster.certificate_authority_data) {
            (_, Some(data)) => crate::tls::roots_of(crate::tls::parse_certs(
                &decode(data, "certificate-authority-data")?,
                "certificate-authority-data",
            )?)?,
            (Some(file), None) => crate::tls::root_store(&base.join(file))?,
            (None, None) => {
                return refuse("the cluster has no certificate-authority: refusing to trust the system roots");
            }
        },
    )
}

fn credential(user: &KubeUser, base: &Path) -> Result<Credential, ApiserverError> {
    let refuse = |m: String| Err(ApiserverError::Config(m));
    let unsupported = [
        (user.exec.is_some(), "an exec credential plugin"),
        (user.auth_provider.is_some(), "an auth-provider"),
        (
            user.username.is_some(),
            "a username and password (basic authentication)",
        ),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
        return refuse(format!(
            "{what}, which the agent does not run: give it a token, tokenFile, or client-certificate and \
             client-key (docs/configuration.md, The agent's credential)"
        ));
    }
    if user.impersonate.is_some() || user.as_groups.is_some() || user.as_uid.is_some() || user.as_user_extra.is_some() {
        return refuse("as/as-groups/as-uid/as-user-extra: the agent impersonates each caller itself, so its own credential must not".into());
    }
    let bearer = match (&user.token, &user.token_file) {
        (Some(token), _) => Some(TokenSource::Static(token.clone())),
        (None, Some(file)) => Some(TokenSource::File(TokenFile::new(base.join(file)))),
        (None, None) => None,
    };
    // The inline form wins over the file, as in client-go.
    let cert = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(data), _) => Some(CertSource::Inline(decode(data, "client-certificate-data")?)),
        (None, Some(file)) => Some(CertSource::File(base.join(file))),
        (None, None) => None,
    };
    let key = match (&user.client_key_data, &user.client_key) {
        (Some(data), _) => Some(CertSource::Inline(decode(data, "client-key-data")?)),
        (None, Some(file)) => Some(CertSource::File(base.join(file))),
        (None, None) => None,
    };
    let cert = match (cert, key) {
        (Some(cert), Some(key)) => Some(Arc::new(ClientCert::load(cert, key)?)),
        (Some(_), None) => return refuse("client-certificate without client-key (or client-key-data)".into()),
        (None, Some(_)) => return refuse("client-key without client-certificate (or client-certificate-data)".into()),
        (None, None) => None,
    };
    if bearer.is_none() && cert.is_none() {
        return refuse(
            "no credential: give it a token, tokenFile, or client-certificate and client-key (or their -data forms)"
                .into(),
        );
    }
    Ok(Credential { bearer, cert })
}

fn decode(data: &str, what: &str) -> Result<Vec<u8>, ApiserverError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiserverError::Config(format!("{what} is not base64: {e}")))
}

fn find<'a, T>(items: &'a [Named<T>], name: &str) -> Option<&'a T> {
    items.iter().find(|i| i.name == name).map(|i| &i.value)
}
