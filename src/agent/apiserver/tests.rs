use super::*;

/// An apiserver client for `server`, from a kubeconfig with a throw-away CA and a static token.
fn apiserver(server: &str) -> Apiserver {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    crate::tls::ensure_self_signed(&cert, &key, &["localhost".into()]).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let config = serde_json::json!({
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": cert}}],
        "users": [{"name": "u", "user": {"token": "agent-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    std::fs::write(&kubeconfig, config.to_string()).unwrap();
    Apiserver::from_config(&ApiserverConfig {
        kubeconfig: Some(kubeconfig),
    })
    .unwrap()
}

#[test]
fn no_request_target_can_name_another_host() {
    let api = apiserver("https://10.0.0.1:6443/prefix");
    for (target, path) in [
        ("/api/v1/pods?watch=1", "/prefix/api/v1/pods?watch=1"),
        ("http://evil.example/api", "/prefix/api"),
        ("https://user@evil.example:443/api?x=1", "/prefix/api?x=1"),
        ("//evil.example/api", "/prefix//evil.example/api"),
        ("evil.example:443", "/prefix/"),
    ] {
        let uri: Uri = target.parse().unwrap();
        let out = api.uri_for(&uri).unwrap();
        assert_eq!(out.authority().unwrap().as_str(), "10.0.0.1:6443", "{target}");
        assert_eq!(out.scheme_str(), Some("https"), "{target}");
        assert_eq!(out.path_and_query().unwrap().as_str(), path, "{target}");
    }
}

#[test]
fn asterisk_form_and_dot_segments_are_refused() {
    let api = apiserver("https://gw.example/k8s/clusters/c1");
    for target in [
        "*",
        "/../c2/api",
        "/api/./v1",
        "/%2e%2e/c2/api",
        "/%2E./x",
        "/api/v1/namespaces/a%2F..%2Fb",
    ] {
        assert!(api.uri_for(&target.parse().unwrap()).is_err(), "{target}");
    }
    assert!(api.uri_for(&"/api/v1/namespaces/a.b/pods/..c".parse().unwrap()).is_ok());
}

#[test]
fn the_apiserver_must_be_https_with_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let config = serde_json::json!({
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    std::fs::write(&kubeconfig, config.to_string()).unwrap();
    let err = Apiserver::from_config(&ApiserverConfig {
        kubeconfig: Some(kubeconfig),
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("refusing to trust the system roots"), "{err}");
}

/// `from_config` of a kubeconfig in `dir` with this `cluster` and `user` (JSON, kubeconfig keys).
fn with_user(dir: &Path, cluster: serde_json::Value, user: serde_json::Value) -> Result<Apiserver, ApiserverError> {
    let kubeconfig = dir.join("kubeconfig");
    let config = serde_json::json!({
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    std::fs::write(&kubeconfig, config.to_string()).unwrap();
    Apiserver::from_config(&ApiserverConfig {
        kubeconfig: Some(kubeconfig),
    })
}

#[test]
fn client_certificates_load_from_files_or_inline_data() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("agent.crt"), dir.path().join("agent.key"));
    crate::tls::ensure_self_signed(&cert, &key, &["agent".into()]).unwrap();
    let cluster = serde_json::json!({"server": "https://10.0.0.1", "certificate-authority": "agent.crt"});

    // Relative to the kubeconfig's directory, as kubectl reads them.
    let api = with_user(
        dir.path(),
        cluster.clone(),
        serde_json::json!({"client-certificate": "agent.crt", "client-key": "agent.key"}),
    )
    .unwrap();
    assert_eq!(api.bearer().unwrap(), None, "no token: the certificate alone");
    assert_eq!(api.credential(), format!("client certificate {}", cert.display()));

    let b64 = |path: &Path| base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap());
    let api = with_user(
        dir.path(),
        cluster.clone(),
        serde_json::json!({
            "client-certificate-data": b64(&cert), "client-key-data": b64(&key), "token": "t",
        }),
    )
    .unwrap();
    assert_eq!(
        api.bearer().unwrap().as_deref(),
        Some("t"),
        "both, as kubectl sends both"
    );
    assert_eq!(
        api.credential(),
        "client certificate client-certificate-data (inline) and the kubeconfig's token"
    );
}

#[test]
fn credentials_the_agent_cannot_use_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("agent.crt"), dir.path().join("agent.key"));
    crate::tls::ensure_self_signed(&cert, &key, &["agent".into()]).unwrap();
    let ca = serde_json::json!({"server": "https://10.0.0.1", "certificate-authority": cert});
    let cases = [
        (
            serde_json::json!({"server": "https://10.0.0.1", "insecure-skip-tls-verify": true}),
            serde_json::json!({"token": "t"}),
            "there is no insecure mode",
        ),
        (
            serde_json::json!({"server": "https://10.0.0.1", "certificate-authority": cert, "insecure-skip-tls-verify": true}),
            serde_json::json!({"token": "t"}),
            "insecure-skip-tls-verify",
        ),
        (
            ca.clone(),
            serde_json::json!({"client-certificate": cert}),
            "client-certificate without client-key",
        ),
        (
            ca.clone(),
            serde_json::json!({"client-key": key}),
            "client-key without client-certificate",
        ),
        (
            ca.clone(),
            serde_json::json!({"client-certificate-data": "%%%", "client-key": key}),
            "client-certificate-data is not base64",
        ),
        (
            ca.clone(),
            serde_json::json!({"client-certificate": cert, "client-key": "missing.key"}),
            "missing.key",
        ),
        (
            ca.clone(),
            serde_json::json!({"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}),
            "an exec credential plugin, which the agent does not run",
        ),
        (
            ca.clone(),
            serde_json::json!({"auth-provider": {"name": "oidc"}}),
            "an auth-provider",
        ),
        (
            ca.clone(),
            serde_json::json!({"token": "t", "as": "admin"}),
            "the agent impersonates each caller itself",
        ),
        (
            ca.clone(),
            serde_json::json!({}),
            "user u: no credential: give it a token, tokenFile, or client-certificate",
        ),
    ];
    for (cluster, user, expected) in cases {
        let err = with_user(dir.path(), cluster, user.clone()).err().unwrap().to_string();
        assert!(err.contains(expected), "{user}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}
