use super::*;

type Row = (String, String, Option<String>, Option<String>);

fn info(method: Method, uri: &str) -> Row {
    let i = request_info(&method, &uri.parse().unwrap()).unwrap();
    (i.verb, i.resource, i.namespace, i.name)
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn resolves_like_the_apiserver() {
    let cases: &[(Method, &str, Row)] = &[
        (
            Method::GET,
            "/api/v1/namespaces/dev/pods",
            ("list".into(), "pods".into(), s("dev"), None),
        ),
        (
            Method::GET,
            "/api/v1/namespaces/dev/pods?watch=true&resourceVersion=1",
            ("watch".into(), "pods".into(), s("dev"), None),
        ),
        (
            Method::GET,
            "/api/v1/watch/namespaces/dev/pods/p",
            ("watch".into(), "pods".into(), s("dev"), s("p")),
        ),
        (
            Method::POST,
            "/api/v1/namespaces/dev/pods/p/exec?command=sh",
            ("create".into(), "pods/exec".into(), s("dev"), s("p")),
        ),
        (
            Method::PATCH,
            "/apis/apps/v1/namespaces/dev/deployments/web",
            ("patch".into(), "apps/deployments".into(), s("dev"), s("web")),
        ),
        (
            Method::GET,
            "/api/v1/namespaces/dev",
            ("get".into(), "namespaces".into(), s("dev"), s("dev")),
        ),
        (
            Method::PUT,
            "/api/v1/namespaces/dev/finalize",
            ("update".into(), "namespaces/finalize".into(), s("dev"), s("dev")),
        ),
        (
            Method::DELETE,
            "/api/v1/nodes",
            ("deletecollection".into(), "nodes".into(), None, None),
        ),
        (
            Method::GET,
            "/api/v1/proxy/namespaces/dev/services/web/a/b",
            ("proxy".into(), "services".into(), s("dev"), s("web")),
        ),
        (Method::GET, "/version", ("get".into(), String::new(), None, None)),
        (Method::GET, "/apis", ("get".into(), String::new(), None, None)),
        (Method::GET, "/apis/apps/v1", ("get".into(), String::new(), None, None)),
    ];
    for (method, uri, want) in cases {
        assert_eq!(&info(method.clone(), uri), want, "{method} {uri}");
    }
}

#[test]
fn any_watch_value_but_false_or_0_is_a_watch() {
    for (query, verb) in [
        ("watch=1", "watch"),
        ("watch=yes", "watch"),
        ("watch=", "watch"),
        ("watch", "watch"),
        ("watch=FALSE", "list"),
        ("watch=0", "list"),
        ("watch=0&watch=1", "list"),
        ("x=watch", "list"),
        ("watch=%FF", "watch"),
        ("watch=%zz", "list"),
    ] {
        assert_eq!(info(Method::GET, &format!("/api/v1/pods?{query}")).0, verb, "{query}");
    }
}

#[test]
fn percent_encoding_is_decoded_before_the_path_is_split() {
    // The finding: the Secret was read while the audit line said `secr%65ts` in `kube%2Dsystem`.
    assert_eq!(
        info(Method::GET, "/api/v1/namespaces/kube%2Dsystem/secr%65ts/x"),
        ("get".into(), "secrets".into(), s("kube-system"), s("x"))
    );
    // Go decodes %2F into a separator before splitting, so this names pods in `a`.
    assert_eq!(
        info(Method::GET, "/api/v1/namespaces/a%2Fpods"),
        ("list".into(), "pods".into(), s("a"), None)
    );
    assert_eq!(
        info(Method::GET, "/api/v1/w%61tch/pods").0,
        "watch",
        "an encoded special verb is still the verb"
    );
    assert_eq!(info(Method::GET, "/api/v1/pods?w%61tch=tru%65").0, "watch");
    assert_eq!(
        info(Method::GET, "/api/v1/pods?watch=0+").0,
        "watch",
        "`+` is a space in a query"
    );
    assert_eq!(
        info(Method::GET, "/api/v1/namespaces/caf%C3%A9/pods").2,
        s("café"),
        "UTF-8 decodes"
    );
}

#[test]
fn malformed_or_non_utf8_paths_are_refused() {
    let err = |uri: &str| request_info(&Method::GET, &uri.parse().unwrap()).unwrap_err();
    assert_eq!(err("/api/v1/namespaces/a%2/pods"), PathError::BadEscape);
    assert_eq!(err("/api/v1/namespaces/a%zz/pods"), PathError::BadEscape);
    assert_eq!(err("/api/v1/pods%"), PathError::BadEscape);
    assert_eq!(err("/api/v1/namespaces/%ff/pods"), PathError::NotUtf8);
}
