use std::time::Duration;

use http_body_util::BodyExt;

use super::*;

fn log_to(dir: &tempfile::TempDir) -> (Arc<AuditLog>, PathBuf) {
    let path = dir.path().join("audit.log");
    let config = AuditConfig {
        output: path.display().to_string(),
    };
    (AuditLog::open(&config, "relay", "relay-1").unwrap(), path)
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn formats_utc_times() {
    assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_881_845_123);
    assert_eq!(rfc3339(t), "2026-11-28T16:04:05.123Z");
    let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
    assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
}

#[tokio::test]
async fn one_line_when_the_last_handle_drops_with_bytes_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (log, path) = log_to(&dir);
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer s3cret-token".parse().unwrap());
    let uri: Uri = "/api/v1/namespaces/dev/pods?labelSelector=token%3Ds3cret"
        .parse()
        .unwrap();
    let audit = log.begin("relay-1-1", &Method::GET, &uri, &headers);
    audit.set(|f| {
        f.caller = Some("alice".into());
        f.groups = vec!["dev".into()];
        f.cluster = Some("prod".into());
        f.agent = Some("agent-a".into());
    });
    let body = audit.count(crate::body::full("hello world"), false);
    audit.status(200);
    drop(audit);
    log.flush();
    assert!(lines(&path).is_empty(), "the body still holds the record open");
    let collected = body.collect().await.unwrap().to_bytes();
    assert_eq!(collected.len(), 11);
    log.flush();
    assert_eq!(lines(&path).len(), 1, "exactly one line per request");

    let written = std::fs::read_to_string(&path).unwrap();
    assert!(!written.contains("s3cret"), "a token or the query leaked: {written}");
    let line = &lines(&path)[0];
    assert_eq!(line["component"], "relay");
    assert_eq!(line["instance"], "relay-1");
    assert_eq!(line["request_id"], "relay-1-1");
    assert_eq!(line["caller"], "alice");
    assert_eq!(line["groups"][0], "dev");
    assert_eq!(line["cluster"], "prod");
    assert_eq!(line["verb"], "list");
    assert_eq!(line["resource"], "pods");
    assert_eq!(line["namespace"], "dev");
    assert_eq!(line["path"], "/api/v1/namespaces/dev/pods");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_out"], 11);
    assert_eq!(line["bytes_in"], 0);
    assert_eq!(line["agent"], "agent-a");
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn refusals_are_lines_too_and_none_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, path) = log_to(&dir);
    let audit = log.begin(
        "r-2",
        &Method::POST,
        &"/api/v1/namespaces/a/pods/p/exec".parse().unwrap(),
        &HeaderMap::new(),
    );
    audit.status(401);
    drop(audit);
    log.flush();
    let line = &lines(&path)[0];
    assert_eq!(line["status"], 401);
    assert_eq!(line["caller"], serde_json::Value::Null);
    assert_eq!(line["resource"], "pods/exec");

    let none = AuditLog::open(&AuditConfig { output: "none".into() }, "agent", "a").unwrap();
    assert!(!none.is_enabled() && log.is_enabled());
    drop(none.begin("r-3", &Method::GET, &"/version".parse().unwrap(), &HeaderMap::new()));
    none.flush();
}

#[test]
fn upgrade_kinds_come_from_a_fixed_set_never_the_callers_value() {
    assert_eq!(upgrade_kind(b"websocket"), "websocket");
    assert_eq!(upgrade_kind(b"WebSocket"), "websocket");
    assert_eq!(upgrade_kind(b"SPDY/3.1"), "spdy");
    assert_eq!(upgrade_kind(b"h2c"), "other");
    let dir = tempfile::tempdir().unwrap();
    let (log, path) = log_to(&dir);
    let mut headers = HeaderMap::new();
    headers.insert("connection", "Upgrade".parse().unwrap());
    headers.insert("upgrade", "x-secret-ABC123".parse().unwrap());
    drop(log.begin("u", &Method::GET, &"/version".parse().unwrap(), &headers));
    log.flush();
    assert_eq!(lines(&path)[0]["upgrade"], "other");
    assert!(!std::fs::read_to_string(&path).unwrap().contains("secret"));
}

#[test]
fn a_full_queue_waits_for_room_and_loses_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let (log, path) = log_to(&dir);
    let total = QUEUE_LINES * 3;
    std::thread::scope(|scope| {
        for t in 0..4 {
            let log = &log;
            scope.spawn(move || {
                for i in 0..total / 4 {
                    drop(log.begin(
                        &format!("{t}-{i}"),
                        &Method::GET,
                        &"/version".parse().unwrap(),
                        &HeaderMap::new(),
                    ));
                }
            });
        }
    });
    log.flush();
    let lines = lines(&path);
    assert_eq!(lines.len(), total, "every line, each whole");
}

#[test]
fn the_file_is_private_and_appended() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (log, path) = log_to(&dir);
    drop(log.begin("a", &Method::GET, &"/version".parse().unwrap(), &HeaderMap::new()));
    log.flush();
    let (log, _) = log_to(&dir);
    drop(log.begin("b", &Method::GET, &"/version".parse().unwrap(), &HeaderMap::new()));
    log.flush();
    assert_eq!(lines(&path).len(), 2);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn records_what_the_apiserver_acts_on_not_the_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let (log, path) = log_to(&dir);
    let uri: Uri = "/api/v1/namespaces/kube%2Dsystem/secr%65ts/x".parse().unwrap();
    drop(log.begin("r-enc", &Method::GET, &uri, &HeaderMap::new()));
    log.flush();
    let line = &lines(&path)[0];
    assert_eq!(line["namespace"], "kube-system");
    assert_eq!(line["resource"], "secrets");
    assert_eq!(line["name"], "x");
    assert_eq!(line["verb"], "get");
}
