//! The audit trail: one JSON line per request, at the relay and at the agent.
//!
//! Each line says who (caller and groups, as authenticated; in passthrough
//! mode also the cluster token's user), where (cluster, relay and agent
//! instances), what (verb, resource, path, upgrade kind), and how it went
//! (status, bytes each way, duration). The request id is the same on both
//! sides, so a relay line and an agent line join. A line is written when the
//! exchange is over: the response body finished or was dropped, or the
//! upgraded stream closed; refusals (401, 403, 404, 503) are lines too.
//!
//! Never a token: no header value is ever recorded, and the query string is
//! left out (it may carry a caller's data). Lines go to stdout or a file
//! opened for append (mode 0600) from a writer thread of their own, so a slow
//! disk or a stalled stdout never blocks the async runtime. Its queue is
//! bounded ([`QUEUE_LINES`]); when it is full, request tasks wait for room
//! rather than drop a line: under a stuck sink the service slows down, it
//! never goes unaudited.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, Method, Uri};
use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::request_info::request_info;

/// Where audit lines go: `"stdout"` (the default), `"none"`, or a file path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `stdout`, `none`, or a file to append to (relative to the config file).
    pub output: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            output: "stdout".to_owned(),
        }
    }
}

impl AuditConfig {
    /// The file to append to, if the output is a file.
    pub fn file(&self) -> Option<PathBuf> {
        match self.output.as_str() {
            "stdout" | "none" => None,
            path => Some(PathBuf::from(path)),
        }
    }

    /// Makes a relative file path relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        if let Some(file) = self.file()
            && file.is_relative()
        {
            self.output = base.join(file).display().to_string();
        }
    }

    /// Checks the output once at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.output.trim().is_empty() {
            return Err("audit.output: use \"stdout\", \"none\" or a file path".into());
        }
        Ok(())
    }
}

/// The audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    path: String,
    source: std::io::Error,
}

/// Lines queued for the writer thread before request tasks wait for room.
pub const QUEUE_LINES: usize = 4096;

enum Sink {
    None,
    /// The writer thread's queue.
    Writer(SyncSender<Message>),
}

enum Message {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

/// The writer thread's loop: write each line with one `write`, flush, answer barriers;
/// `queued` counts the lines waiting.
fn write_lines(mut out: Box<dyn Write + Send>, queue: Receiver<Message>, queued: Arc<AtomicU64>) {
    for message in queue {
        match message {
            Message::Line(text) => {
                if let Err(e) = out.write_all(&text).and_then(|()| out.flush()) {
                    tracing::error!(error = %e, "cannot write the audit log");
                }
                queued.fetch_sub(1, Ordering::Relaxed);
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Writes audit lines for one component (relay or agent).
pub struct AuditLog {
    /// Swapped by [`AuditLog::reopen`]; lines go to the sink current when they are written.
    sink: RwLock<Arc<Sink>>,
    /// Lines queued and not yet written, over every sink this log had.
    queued: Arc<AtomicU64>,
    /// The gauge of `queued`, made with the first writer.
    gauge: OnceLock<opentelemetry::metrics::ObservableGauge<u64>>,
    component: &'static str,
    instance: String,
    /// Whether request spans carry the caller's username (`[telemetry] record_user`).
    user_in_spans: std::sync::atomic::AtomicBool,
}

impl AuditLog {
    /// Opens the configured output for `component` (`relay` or `agent`) named `instance`.
    pub fn open(config: &AuditConfig, component: &'static str, instance: &str) -> Result<Arc<Self>, AuditError> {
        let log = Self {
            sink: RwLock::new(Arc::new(Sink::None)),
            queued: Arc::default(),
            gauge: OnceLock::new(),
            component,
            instance: instance.to_owned(),
            user_in_spans: Default::default(),
        };
        log.reopen(config)?;
        Ok(Arc::new(log))
    }

    /// Opens `config`'s output (again) and sends every later line there: a reload, or a rotated
    /// file. Lines queued before it are still written to the old output; on an error the old
    /// output stays.
    pub fn reopen(&self, config: &AuditConfig) -> Result<(), AuditError> {
        let out: Box<dyn Write + Send> = match config.output.as_str() {
            "none" => {
                *self.sink.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Sink::None);
                return Ok(());
            }
            "stdout" => Box::new(std::io::stdout()),
            path => {
                use std::os::unix::fs::OpenOptionsExt;
                let error = |source| AuditError {
                    path: path.to_owned(),
                    source,
                };
                if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(error)?;
                }
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(error)?;
                Box::new(file)
            }
        };
        let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE_LINES);
        let written = self.queued.clone();
        std::thread::Builder::new()
            .name(format!("{}-audit", self.component))
            .spawn(move || write_lines(out, lines, written))
            .map_err(|source| AuditError {
                path: config.output.clone(),
                source,
            })?;
        self.gauge.get_or_init(|| {
            let depth = self.queued.clone();
            crate::telemetry::metrics::meter()
                .u64_observable_gauge("hawser.audit.queue")
                .with_description("Audit lines waiting for the writer; at the queue's bound requests wait for room")
                .with_unit("{line}")
                .with_callback(move |observer| observer.observe(depth.load(Ordering::Relaxed), &[]))
                .build()
        });
        // The old writer thread ends once the lines already sent to it are written.
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Sink::Writer(queue));
        Ok(())
    }

    /// The sink now.
    fn sink(&self) -> Arc<Sink> {
        self.sink.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts the record of one request; the line is written when the last handle drops.
    /// Verb, resource, namespace and name are those the apiserver acts on (decoded); a path it
    /// would refuse leaves them empty.
    pub fn begin(self: &Arc<Self>, request_id: &str, method: &Method, uri: &Uri, headers: &HeaderMap) -> Audit {
        crate::telemetry::metrics::metrics().begin();
        let info = request_info(method, uri).unwrap_or_default();
        let upgrade = crate::headers::upgrade_protocol(headers).map(|v| upgrade_kind(v.as_bytes()).to_owned());
        Audit(Arc::new(Entry {
            log: self.clone(),
            started: Instant::now(),
            time: SystemTime::now(),
            fields: Mutex::new(Fields {
                request_id: request_id.to_owned(),
                method: method.as_str().to_owned(),
                path: uri.path().to_owned(),
                verb: info.verb,
                resource: info.resource,
                namespace: info.namespace,
                name: info.name,
                upgrade,
                long_running: crate::forward::long_running(method, uri, headers),
                ..Fields::default()
            }),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            held: Mutex::new(Vec::new()),
            span: Mutex::new(None),
        }))
    }

    fn write<T: Serialize>(&self, line: &T) {
        let sink = self.sink();
        let Sink::Writer(queue) = &*sink else {
            return;
        };
        let queued = &self.queued;
        let Ok(mut text) = serde_json::to_vec(line) else {
            return;
        };
        text.push(b'\n');
        // Counted before it is sent, so the writer's decrement never comes first.
        queued.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(Message::Line(text)) {
            Ok(()) => {}
            // Full: wait for room (see the module docs); this blocks only while the sink is stuck.
            Err(TrySendError::Full(message)) => {
                let multi_thread = tokio::runtime::Handle::try_current()
                    .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
                let _ = if multi_thread {
                    tokio::task::block_in_place(|| queue.send(message))
                } else {
                    queue.send(message)
                };
            }
            Err(TrySendError::Disconnected(_)) => {
                queued.fetch_sub(1, Ordering::Relaxed);
                tracing::error!("the audit writer thread is gone");
            }
        }
    }

    /// Waits until every line recorded so far is written (at shutdown, and in tests).
    pub fn flush(&self) {
        if let Sink::Writer(queue) = &*self.sink() {
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            if queue.send(Message::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    /// Lets request spans carry the caller's username (`[telemetry] record_user`).
    pub fn name_users_in_spans(&self, yes: bool) {
        self.user_in_spans.store(yes, Ordering::Relaxed);
    }

    /// Whether lines go anywhere (`false` for `output = "none"`).
    pub fn is_enabled(&self) -> bool {
        matches!(*self.sink(), Sink::Writer(..))
    }
}

/// What is known about a request so far.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    /// Same on relay and agent.
    pub request_id: String,
    /// The caller's username, once authenticated.
    pub caller: Option<String>,
    /// The caller's groups.
    pub groups: Vec<String>,
    /// Passthrough mode: the user the cluster token belongs to.
    pub cluster_user: Option<String>,
    /// The cluster.
    pub cluster: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Kubernetes verb.
    pub verb: String,
    /// `group/resource[/subresource]`.
    pub resource: String,
    /// Namespace, if any.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
    /// Request path without the query.
    pub path: String,
    /// Response status.
    pub status: Option<u16>,
    /// The `Upgrade` protocol asked for (websocket, SPDY/3.1).
    pub upgrade: Option<String>,
    /// The relay instance.
    pub relay: Option<String>,
    /// The agent instance.
    pub agent: Option<String>,
    /// The fleet relay the request was forwarded to (it holds the agent's tunnel).
    pub via: Option<String>,
    /// `cluster` is one this process serves (not a name a caller made up): metrics may name it.
    pub known_cluster: bool,
    /// A watch, followed log or upgrade: its duration is no latency.
    pub long_running: bool,
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    component: &'static str,
    instance: &'a str,
    request_id: &'a str,
    caller: Option<&'a str>,
    groups: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_user: Option<&'a str>,
    cluster: Option<&'a str>,
    method: &'a str,
    verb: &'a str,
    resource: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    path: &'a str,
    status: Option<u16>,
    upgrade: Option<&'a str>,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    relay: Option<&'a str>,
    agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'a str>,
}

struct Entry {
    log: Arc<AuditLog>,
    started: Instant,
    time: SystemTime,
    fields: Mutex<Fields>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Things that must live exactly as long as the exchange (a caller's stream slot).
    held: Mutex<Vec<Box<dyn Send>>>,
    /// The exchange's span, given its attributes when the record closes.
    span: Mutex<Option<tracing::Span>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let f = self.fields.get_mut().unwrap_or_else(|e| e.into_inner());
        let record = Record {
            time: rfc3339(self.time),
            component: self.log.component,
            instance: &self.log.instance,
            request_id: &f.request_id,
            caller: f.caller.as_deref(),
            groups: &f.groups,
            cluster_user: f.cluster_user.as_deref(),
            cluster: f.cluster.as_deref(),
            method: &f.method,
            verb: &f.verb,
            resource: &f.resource,
            namespace: f.namespace.as_deref(),
            name: f.name.as_deref(),
            path: &f.path,
            status: f.status,
            upgrade: f.upgrade.as_deref(),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            duration_ms: (self.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            relay: f.relay.as_deref(),
            agent: f.agent.as_deref(),
            via: f.via.as_deref(),
        };
        self.log.write(&record);
        let closed = observe::Closed {
            fields: f,
            component: self.log.component,
            bytes_in: record.bytes_in,
            bytes_out: record.bytes_out,
            seconds: self.started.elapsed().as_secs_f64(),
            user_in_span: self.log.user_in_spans.load(Ordering::Relaxed),
        };
        let span = self.span.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        observe::record(&closed, span.as_ref());
    }
}

/// A handle on one request's audit record; clones share it, and the line is
/// written when the last clone drops.
#[derive(Clone)]
pub struct Audit(Arc<Entry>);

impl Audit {
    /// Updates what is known about the request.
    pub fn set(&self, update: impl FnOnce(&mut Fields)) {
        update(&mut self.0.fields.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Keeps `thing` alive until the exchange is over (the record's lifetime).
    pub fn hold(&self, thing: impl Send + 'static) {
        self.0
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(thing));
    }

    /// Gives the exchange's span its attributes (cluster, verb, status, bytes) when it closes.
    pub fn trace(&self, span: tracing::Span) {
        *self.0.span.lock().unwrap_or_else(|e| e.into_inner()) = Some(span);
    }

    /// Records the response status.
    pub fn status(&self, status: u16) {
        self.set(|f| f.status = Some(status));
    }

    /// Counts bytes from the caller towards the cluster.
    pub fn add_in(&self, n: u64) {
        self.0.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes from the cluster towards the caller.
    pub fn add_out(&self, n: u64) {
        self.0.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Wraps `body` so its data bytes are counted in (`inbound`) or out, and
    /// the record stays open until the body is done or dropped.
    pub fn count(&self, body: Body, inbound: bool) -> Body {
        http_body_util::BodyExt::boxed(counted::Counted {
            inner: body,
            audit: Some(self.clone()),
            inbound,
        })
    }
}

/// The kind of upgrade asked for, from a fixed set: the caller's own `Upgrade` value never reaches the log.
fn upgrade_kind(value: &[u8]) -> &'static str {
    let starts = |prefix: &[u8]| {
        value
            .get(..prefix.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
    };
    if starts(b"websocket") {
        "websocket"
    } else if starts(b"spdy/") {
        "spdy"
    } else {
        "other"
    }
}

/// `2026-11-28T15:04:05.123Z` for a system time: RFC 3339 in UTC, milliseconds always shown.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from(time)
        .format(FORMAT)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

mod counted;
mod event;
mod observe;
#[cfg(test)]
mod tests;

pub use event::AgentEvent;
