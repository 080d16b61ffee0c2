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
