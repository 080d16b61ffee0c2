//! The Kubernetes verb and resource of a request, from its method and path,
//! as the apiserver's request-info resolver would name them (close enough for
//! an audit line: the apiserver's own audit log remains the authority).

use http::{Method, Uri};

/// Verb and resource of one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// get, list, watch, create, update, patch, delete, deletecollection; for
    /// non-resource paths, the lower-case method.
    pub verb: String,
    /// `group/resource` or `resource`, with `/subresource` when there is one; empty for non-resource paths.
    pub resource: String,
    /// The namespace, if the path names one.
    pub namespace: Option<String>,
    /// The object's name, if the path names one.
    pub name: Option<String>,
}

/// Resolves `method` and `uri` (a path on the apiserver, without `/clusters/NAME`).
pub fn request_info(method: &Method, uri: &Uri) -> RequestInfo {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let watch_param = uri.query().is_some_and(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .any(|(k, v)| k == "watch" && matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True"))
    });
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return non_resource(method),
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(*ns), rest),
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [] => return non_resource(method),
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub, ..] => (*resource, Some(*name), Some(*sub)),
    };
    let verb = match *method {
        Method::GET | Method::HEAD if watch_path || watch_param => "watch",
        Method::GET | Method::HEAD if name.is_some() => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => return non_resource(method),
    };
    let mut full = if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{group}/{resource}")
    };
    if let Some(sub) = subresource {
        full.push('/');
        full.push_str(sub);
    }
    RequestInfo {
        verb: verb.to_owned(),
        resource: full,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    }
}

fn non_resource(method: &Method) -> RequestInfo {
    RequestInfo {
        verb: method.as_str().to_ascii_lowercase(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, uri: &str) -> (String, String, Option<String>, Option<String>) {
        let i = request_info(&method, &uri.parse().unwrap());
        (i.verb, i.resource, i.namespace, i.name)
    }

    #[test]
    fn resolves_like_the_apiserver() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            info(Method::GET, "/api/v1/namespaces/dev/pods"),
            ("list".into(), "pods".into(), s("dev"), None)
        );
        assert_eq!(
            info(Method::GET, "/api/v1/namespaces/dev/pods?watch=true&resourceVersion=1"),
            ("watch".into(), "pods".into(), s("dev"), None)
        );
        assert_eq!(
            info(Method::GET, "/api/v1/watch/namespaces/dev/pods/p"),
            ("watch".into(), "pods".into(), s("dev"), s("p"))
        );
        assert_eq!(
            info(Method::POST, "/api/v1/namespaces/dev/pods/p/exec?command=sh"),
            ("create".into(), "pods/exec".into(), s("dev"), s("p"))
        );
        assert_eq!(
            info(Method::PATCH, "/apis/apps/v1/namespaces/dev/deployments/web"),
            ("patch".into(), "apps/deployments".into(), s("dev"), s("web"))
        );
        assert_eq!(
            info(Method::GET, "/api/v1/namespaces/dev"),
            ("get".into(), "namespaces".into(), None, s("dev"))
        );
        assert_eq!(
            info(Method::DELETE, "/api/v1/nodes"),
            ("deletecollection".into(), "nodes".into(), None, None)
        );
        assert_eq!(info(Method::GET, "/version"), ("get".into(), String::new(), None, None));
        assert_eq!(info(Method::GET, "/apis"), ("get".into(), String::new(), None, None));
        assert_eq!(
            info(Method::GET, "/apis/apps/v1"),
            ("get".into(), String::new(), None, None)
        );
    }
}
