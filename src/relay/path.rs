//! A caller's request to a cluster, as tower layers, outermost first: request id and span →
//! audit → failed-authentication limit → authenticate → access rules → per-caller limit → route
//! to a tunnel (`route`). Each step hands what it learned to the next in the request's
//! extensions; a refusal rises as a typed [`Refusal`] to the audit step, the one place it becomes
//! a Kubernetes `Status` (by [`Refusal::status`]) and is recorded.
//!
//! An admin's request for the fleet report (`hawser clusters`) takes the same steps up to the
//! access rules, then the admin rule and the report (`overview`) instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, Response, Uri};
use tower::{Layer, ServiceBuilder};
use tracing::Instrument;

use super::RelayState;
use super::limits::Attempt;
use super::overview::Report;
use super::refusal::Refusal;
use super::route::Route;
use super::stall::Delivery;
use crate::audit::Audit;
use crate::auth::Caller;
use crate::body::Body;
use crate::proto;
use crate::step::{Next, Path, Step, StepLayer, Stepped};
use crate::telemetry::trace_context::{self, Sampled, request_span};

/// The caller's address, set by the front door.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The request's id, as the agent and both audit logs see it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Where the request goes: its cluster, and its path and query on that cluster's apiserver.
#[derive(Debug, Clone)]
pub struct Target {
    /// The cluster's name.
    pub cluster: String,
    /// Path and query on the apiserver.
    pub upstream: Uri,
}

/// A caller whose token passed, and the token (only ever sent to a cluster it is bound to).
#[derive(Clone)]
pub struct Authenticated {
    /// Who.
    pub caller: Caller,
    /// The bearer token.
    pub token: String,
}

/// The steps every request goes through first: an id, the audit record, the
/// failed-authentication limit and the caller's token.
pub type Shared<S> = Stepped<Identify, Stepped<Audited, Stepped<FailedAuthLimit, Stepped<Authenticate, S>>>>;

/// A cluster's requests: the shared steps, then the access rules, the caller's limit and the route.
pub type ClusterPath = Shared<Stepped<Access, Stepped<CallerLimit, Route>>>;

/// The fleet report: the shared steps, then the admin rule and the report.
pub type ReportPath = Shared<Stepped<Admin, Report>>;

/// The relay's request paths, built once per relay.
#[derive(Clone)]
pub struct RequestPath {
    clusters: ClusterPath,
    report: ReportPath,
}

/// The stacks every request to `/clusters/NAME/...`, and to the fleet report, goes through.
pub fn request_path(state: Arc<RelayState>) -> RequestPath {
    let clusters = ServiceBuilder::new()
        .layer(StepLayer(Access(state.clone())))
        .layer(StepLayer(CallerLimit(state.clone())))
        .service(Route(state.clone()));
    let report = StepLayer(Admin(state.clone())).layer(Report(state.clone()));
    RequestPath {
        clusters: shared(&state, clusters),
        report: shared(&state, report),
    }
}

/// The shared steps around `inner`.
fn shared<S>(state: &Arc<RelayState>, inner: S) -> Shared<S> {
    ServiceBuilder::new()
        .layer(StepLayer(Identify(state.clone())))
        .layer(StepLayer(Audited(state.clone())))
        .layer(StepLayer(FailedAuthLimit(state.clone())))
        .layer(StepLayer(Authenticate(state.clone())))
        .service(inner)
}

/// Sends one request down its path once that is ready: the fleet report's, or a cluster's.
/// (Written for the concrete stacks: a generic version's future loses its `Send` proof to a
/// higher-ranked lifetime in the compiler.)
pub async fn send(path: RequestPath, req: Request<Body>) -> Answer {
    if req.uri().path() == crate::overview::PATH {
        let mut report = path.report;
        std::future::poll_fn(|cx| tower::Service::poll_ready(&mut report, cx)).await?;
        tower::Service::call(&mut report, req).await
    } else {
        let mut clusters = path.clusters;
        std::future::poll_fn(|cx| tower::Service::poll_ready(&mut clusters, cx)).await?;
        tower::Service::call(&mut clusters, req).await
    }
}

/// What each step of the relay's path answers.
type Answer = Result<Response<Body>, Refusal>;

/// The relay's request path: a caller's request in, the response for the caller out.
pub struct RelayPath;

impl Path for RelayPath {
    type Request = Request<Body>;
    type Response = Response<Body>;
    type Error = Refusal;
}

/// Something a step needs that an outer step puts in place, read where it lies: missing, the
/// stack is miswired.
pub(super) fn ext<T: Send + Sync + 'static>(req: &Request<Body>) -> Result<&T, Refusal> {
    req.extensions()
        .get::<T>()
        .ok_or(Refusal::Miswired(std::any::type_name::<T>()))
}

/// Like [`ext`], taken out of the request by its last user (no copy).
pub(super) fn take<T: Send + Sync + 'static>(req: &mut Request<Body>) -> Result<T, Refusal> {
    req.extensions_mut()
        .remove::<T>()
        .ok_or(Refusal::Miswired(std::any::type_name::<T>()))
}

/// Gives the request its id and the span every later log line of it belongs to.
#[derive(Clone)]
pub struct Identify(Arc<RelayState>);

impl Step for Identify {
    type Path = RelayPath;

    async fn run(self, mut req: Request<Body>, next: Next<Self>) -> Answer {
        let id = next_request_id(&self.0.instance);
        // A caller's trace goes on through the relay, the agent and the apiserver.
        let incoming = req
            .headers()
            .get(trace_context::TRACEPARENT)
            .and_then(|v| v.to_str().ok());
        let sampled = Sampled::decide(incoming.unwrap_or_default());
        let span = request_span!(
            sampled,
            "request",
            request.id = %id,
            otel.name = tracing::field::Empty,
            otel.kind = "server",
        );
        if sampled.exported() {
            trace_context::continue_from(&span, incoming.unwrap_or_default());
        }
        req.extensions_mut().insert(RequestId(id));
        req.extensions_mut().insert(sampled);
        next.run(req).instrument(span).await
    }
}

/// Opens the request's audit record, finds its cluster and path, and answers every refusal from
/// the steps inside as a Kubernetes `Status`, recording its code.
#[derive(Clone)]
pub struct Audited(Arc<RelayState>);

impl Step for Audited {
    type Path = RelayPath;

    async fn run(self, mut req: Request<Body>, next: Next<Self>) -> Answer {
        let state = &self.0;
        let RequestId(id) = ext(&req)?;
        // The fleet report has no cluster; every other request names one.
        let asked = if req.uri().path() == crate::overview::PATH {
            Ok(None)
        } else {
            split_cluster_uri(req.uri()).map(Some)
        };
        let (audit, target) = match asked {
            Ok(Some((cluster, upstream))) => {
                let audit = state.audit.begin(id, req.method(), &upstream, req.headers());
                let known = state.clusters.current().knows(&cluster);
                audit.set(|f| {
                    f.cluster = Some(cluster.clone());
                    f.known_cluster = known;
                });
                (audit, Ok(Some(Target { cluster, upstream })))
            }
            other => (
                state.audit.begin(id, req.method(), req.uri(), req.headers()),
                other.map(|_| None),
            ),
        };
        audit.set(|f| f.relay = Some(state.instance.clone()));
        audit.trace(tracing::Span::current());
        let outcome = match target {
            // A path the apiserver would not decode is refused before anything else looks at it.
            Ok(Some(target)) if crate::request_info::request_info(req.method(), &target.upstream).is_err() => {
                Err(Refusal::Undecodable)
            }
            Ok(target) => {
                if let Some(target) = target {
                    req.extensions_mut().insert(target);
                }
                req.extensions_mut().insert(audit.clone());
                next.run(req).await
            }
            Err(e) => Err(e),
        };
        Ok(outcome.unwrap_or_else(|e| {
            crate::telemetry::metrics::metrics().refused(e.reason());
            let status = e.status();
            audit.status(status.code.as_u16());
            bounded(status.into_response())
        }))
    }
}

/// A response the relay made itself: it must reach the caller within the stall bound.
pub fn bounded(mut resp: Response<Body>) -> Response<Body> {
    resp.extensions_mut().insert(Delivery::Bounded);
    resp
}

/// Refuses a source that failed to authenticate too often before any signature is checked, and
/// charges it for credentials refused further on (a token not bound to the cluster, or one the
/// agent refuses and marks).
#[derive(Clone)]
pub struct FailedAuthLimit(Arc<RelayState>);

impl Step for FailedAuthLimit {
    type Path = RelayPath;

    async fn run(self, mut req: Request<Body>, next: Next<Self>) -> Answer {
        let limiter = self.0.live.current().auth_failures.clone();
        let &Peer(peer) = ext(&req)?;
        let attempt = limiter
            .attempt(peer.ip())
            .ok_or_else(|| Refusal::SourceThrottled(limiter.retry_after()))?;
        req.extensions_mut().insert(attempt.clone());
        let outcome = next.run(req).await;
        let caller_failed = match &outcome {
            Ok(resp) => {
                resp.status() == http::StatusCode::UNAUTHORIZED
                    && resp.headers().contains_key(proto::AUTH_FAILED_HEADER)
            }
            Err(e) => e.is_unauthenticated(),
        };
        // A failed authentication already kept its token; a credential refused after the
        // caller authenticated is charged now.
        if caller_failed && attempt.refunded() {
            limiter.charge(peer.ip());
        }
        outcome.map(|mut resp| {
            resp.headers_mut().remove(proto::AUTH_FAILED_HEADER);
            resp
        })
    }
}

/// Checks the caller's bearer token; the caller goes into the request's extensions.
#[derive(Clone)]
pub struct Authenticate(Arc<RelayState>);

impl Step for Authenticate {
    type Path = RelayPath;

    async fn run(self, mut req: Request<Body>, next: Next<Self>) -> Answer {
        let attempt = ext::<Attempt>(&req)?.clone();
        let audit = ext::<Audit>(&req)?.clone();
        let authenticated = match crate::auth::bearer_token(req.headers()) {
            Ok(token) => self
                .0
                .live
                .current()
                .auth
                .authenticate_caller(token)
                .await
                .map(|caller| Authenticated {
                    caller,
                    token: token.to_owned(),
                }),
            Err(e) => Err(e),
        };
        let authenticated = match authenticated {
            Ok(authenticated) => {
                // Given back at once: holding it across a slow exchange would let valid requests
                // from one address look like failures to the next caller from there.
                attempt.refund();
                authenticated
            }
            // An issuer that cannot be reached is not the caller's failure.
            Err(e @ crate::auth::AuthError::ProviderUnavailable(_)) => {
                attempt.refund();
                return Err(e.into());
            }
            Err(e) => {
                attempt.failed();
                return Err(e.into());
            }
        };
        let identity = &authenticated.caller.identity;
        audit.set(|f| {
            f.caller = Some(identity.user.clone());
            f.groups = identity.groups.clone();
        });
        req.extensions_mut().insert(authenticated);
        next.run(req).await
    }
}

/// The access rules: which callers may reach which clusters through this relay.
#[derive(Clone)]
pub struct Access(Arc<RelayState>);

impl Step for Access {
    type Path = RelayPath;

    async fn run(self, req: Request<Body>, next: Next<Self>) -> Answer {
        let identity = &ext::<Authenticated>(&req)?.caller.identity;
        let Target { cluster, .. } = ext(&req)?;
        if !self.0.live.current().access.allows(identity, cluster) {
            return Err(Refusal::Forbidden {
                cluster: cluster.clone(),
                user: identity.user.clone(),
            });
        }
        next.run(req).await
    }
}

/// The admin access rules: who may ask this relay about the fleet.
#[derive(Clone)]
pub struct Admin(Arc<RelayState>);

impl Step for Admin {
    type Path = RelayPath;

    async fn run(self, req: Request<Body>, next: Next<Self>) -> Answer {
        let identity = &ext::<Authenticated>(&req)?.caller.identity;
        if !self.0.live.current().access.admin(identity) {
            return Err(Refusal::NotAdmin {
                user: identity.user.clone(),
            });
        }
        next.run(req).await
    }
}

/// One caller cannot take a whole tunnel's stream budget: every exchange holds a slot until its
/// audit record closes (the end of a watch, an exec, a port-forward).
#[derive(Clone)]
pub struct CallerLimit(Arc<RelayState>);

impl Step for CallerLimit {
    type Path = RelayPath;

    async fn run(self, req: Request<Body>, next: Next<Self>) -> Answer {
        let state = &self.0;
        let user = &ext::<Authenticated>(&req)?.caller.identity.user;
        let limit = state.live.current().limits.max_streams_per_caller;
        let lease = state
            .caller_streams
            .acquire(user, limit)
            .ok_or_else(|| Refusal::CallerBusy {
                user: user.clone(),
                limit,
            })?;
        ext::<Audit>(&req)?.hold(lease);
        next.run(req).await
    }
}

/// Splits `/clusters/NAME/rest?query` into `NAME` and `/rest?query`.
fn split_cluster_uri(uri: &Uri) -> Result<(String, Uri), Refusal> {
    let rest = uri.path().strip_prefix("/clusters/").unwrap_or_default();
    let (cluster, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if !crate::config::valid_cluster_name(cluster) {
        return Err(Refusal::UnknownCluster(cluster.to_owned()));
    }
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let upstream: Uri = path_and_query.parse().map_err(|_| Refusal::MalformedPath)?;
    Ok((cluster.to_owned(), upstream))
}

/// `{instance}-{random}-{counter}`: the random part, drawn once per process, keeps ids unique
/// across restarts and across replicas that share an instance name or a pid.
fn next_request_id(instance: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| format!("{:016x}", rand::random::<u64>()));
    format!("{instance}-{run}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests;
