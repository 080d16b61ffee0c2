//! The backend's kube-apiserver stand-in for `k6mix`: fixed answers, shaped and sized as
//! kube-apiserver's, to the paths `loadtest/k6/kubectl-mix.js` sends (`super::Paths`).
//!
//! - `GET /api/v1/namespaces/NS/pods?...`: a PodList of [`PODS`] pods (about 1.4 KB each);
//! - `GET /api/v1/namespaces/NS/pods/NAME`: that Pod, if NAME is in the list;
//! - `GET /api/v1/configmaps?...`: a ConfigMapList of [`CONFIGMAPS`] across eight namespaces;
//! - `GET /api/v1/namespaces/NS/pods?watch=1&timeoutSeconds=T`: a watch that sends one event
//!   line every [`WATCH_EVERY`] and ends after T seconds, as kube-apiserver ends it.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{Value, json};

use crate::backend::{Body, json, status};

/// Pods in the listed namespace.
pub const PODS: usize = 20;
/// ConfigMaps across all namespaces.
pub const CONFIGMAPS: usize = 40;
/// How often a watch sends an event.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Longest `timeoutSeconds` the stand-in accepts.
const MAX_WATCH_SECONDS: u64 = 3600;

/// The name of the `i`-th pod.
pub fn pod_name(i: usize) -> String {
    format!("web-7d4b9c6f8-{i:05}")
}

fn pod(namespace: &str, i: usize) -> Value {
    let name = pod_name(i);
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": "web-7d4b9c6f8-",
            "namespace": namespace,
            "uid": format!("0b6e2f3c-5a1d-4e8f-9c7b-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i),
            "creationTimestamp": "2026-11-30T09:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c6f8"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c6f8",
                "uid": "5f0c8d2a-9e4b-4c1a-8f3e-2b7d6a9c0e11", "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "registry.example/web:1.4.2",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "PORT", "value": "8080"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": "node-a",
            "schedulerName": "default-scheduler"
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-30T09:00:00Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-30T09:00:04Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-30T09:00:04Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-30T09:00:00Z"}
            ],
            "hostIP": "10.0.0.4",
            "podIP": format!("10.244.1.{}", 10 + i % 240),
            "startTime": "2026-11-30T09:00:00Z",
            "containerStatuses": [{
                "name": "web", "ready": true, "restartCount": 0, "started": true,
                "image": "registry.example/web:1.4.2",
                "imageID": "registry.example/web@sha256:4f1c9a0e5b7d3c2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a",
                "containerID": format!("containerd://{i:064}"),
                "state": {"running": {"startedAt": "2026-11-30T09:00:03Z"}}
            }],
            "qosClass": "Burstable"
        }
    })
}

fn bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// The namespace the mix lists and watches.
pub const NAMESPACE: &str = "default";

/// Each pod's own answer, by index.
pub static POD_BODIES: LazyLock<Vec<Bytes>> = LazyLock::new(|| (0..PODS).map(|i| bytes(&pod(NAMESPACE, i))).collect());

/// The PodList answer.
pub static POD_LIST: LazyLock<Bytes> = LazyLock::new(|| {
    bytes(&json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "123456"},
        "items": (0..PODS).map(|i| pod(NAMESPACE, i)).collect::<Vec<_>>()
    }))
});

/// The ConfigMapList answer (all namespaces).
pub static CONFIGMAP_LIST: LazyLock<Bytes> = LazyLock::new(|| {
    let items: Vec<Value> = (0..CONFIGMAPS)
        .map(|i| {
            json!({
                "metadata": {
                    "name": format!("settings-{i:03}"),
                    "namespace": format!("team-{}", i % 8),
                    "uid": format!("7c1e4b2a-3d5f-4a6b-8c9d-{i:012}"),
                    "resourceVersion": format!("{}", 200_000 + i),
                    "creationTimestamp": "2026-11-29T12:00:00Z"
                },
                "data": {
                    "app.properties": "log.level=info\nfeature.search=true\ncache.ttl=300\nendpoint=https://api.example/v2\n",
                    "owner": format!("team-{}", i % 8)
                }
            })
        })
        .collect();
    bytes(&json!({
        "kind": "ConfigMapList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "123456"},
        "items": items
    }))
});

/// The answer to a GET of `path` (under /api/v1/) with `query`.
pub fn answer(path: &str, query: Option<&str>) -> Response<Body> {
    let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let param = |key: &str| query?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='));
    if path == pods {
        if matches!(param("watch"), Some("1" | "true")) {
            return match param("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()) {
                Some(t) if (1..=MAX_WATCH_SECONDS).contains(&t) => watch(Duration::from_secs(t)),
                _ => status(
                    StatusCode::BAD_REQUEST,
                    "this stand-in's watches need timeoutSeconds=1..3600",
                ),
            };
        }
        return json(POD_LIST.clone());
    }
    if let Some(name) = path.strip_prefix(&pods).and_then(|rest| rest.strip_prefix('/')) {
        return match (0..PODS).find(|&i| pod_name(i) == name) {
            Some(i) => json(POD_BODIES[i].clone()),
            None => status(StatusCode::NOT_FOUND, "no such pod"),
        };
    }
    if path == "/api/v1/configmaps" {
        return json(CONFIGMAP_LIST.clone());
    }
    status(StatusCode::NOT_FOUND, "no such route")
}

fn watch(timeout: Duration) -> Response<Body> {
    let mut ticker = tokio::time::interval(WATCH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Box::pin(tokio::time::sleep(timeout));
    let mut resp = Response::new(Body::WatchUntil(Box::new(ticker), end));
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
