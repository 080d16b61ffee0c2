//! A stream's request as tower layers, outermost first: authenticate → impersonate or pass the
//! cluster token through → upstream (the apiserver). A refusal rises as a typed [`Failure`] to
//! `serve`, the one place it becomes a Kubernetes `Status` (by [`Failure::status`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tracing::debug;

use super::apiserver::Acting;
use super::failure::Failure;
use super::{AgentState, passthrough};
use crate::audit::Audit;
use crate::auth::Identity;
use crate::body::Body;
use crate::forward;
use crate::proto::Credential;
use crate::step::{Next, Path, Step, StepFuture, StepLayer, Stepped};

/// The agent's request path.
pub type RequestPath = Stepped<Authenticate, Stepped<Impersonate, Upstream>>;

/// The stack every stream's request goes through.
pub fn request_path(state: &Arc<AgentState>) -> RequestPath {
    ServiceBuilder::new()
        .layer(StepLayer(Authenticate(state.clone())))
        .layer(StepLayer(Impersonate(state.clone())))
        .service(Upstream(state.clone()))
}

/// Sends one request down the path once it is ready. (Written for the concrete stack: a generic
/// version's future loses its `Send` proof to a higher-ranked lifetime in the compiler.)
pub async fn send(mut path: RequestPath, req: Request<Body>) -> Answer {
    std::future::poll_fn(|cx| tower::Service::poll_ready(&mut path, cx)).await?;
    tower::Service::call(&mut path, req).await
}

/// What each step of the agent's path answers: the apiserver's response, upgradable.
pub type Answer = Result<Response<Incoming>, Failure>;

/// The agent's request path: the request a stream's head describes in, the apiserver's answer out.
pub struct AgentPath;

impl Path for AgentPath {
    type Request = Request<Body>;
    type Response = Response<Incoming>;
    type Error = Failure;
}

/// Something a step needs that an outer step (or `serve`) puts in place, taken out of the
/// request by its last user (no copy).
fn take<T: Send + Sync + 'static>(req: &mut Request<Body>) -> Result<T, Failure> {
    req.extensions_mut()
        .remove::<T>()
        .ok_or(Failure::Miswired(std::any::type_name::<T>()))
}

/// The request's audit record (a shared handle), which every step may add to.
fn audit(req: &Request<Body>) -> Result<Audit, Failure> {
    req.extensions()
        .get::<Audit>()
        .cloned()
        .ok_or(Failure::Miswired(std::any::type_name::<Audit>()))
}

/// Checks the credential in the stream's head against the agent's own issuers (the relay is not
/// trusted for identity); the caller's identity goes into the request's extensions.
#[derive(Clone)]
pub struct Authenticate(Arc<AgentState>);

impl Step for Authenticate {
    type Path = AgentPath;

    async fn run(self, mut req: Request<Body>, next: Next<Self>) -> Answer {
        let state = &self.0;
        if req.method() == http::Method::CONNECT {
            return Err(Failure::Connect);
        }
        crate::request_info::request_info(req.method(), req.uri()).map_err(|e| Failure::Undecodable(e.to_string()))?;
        let credential: Credential = take(&mut req)?;
        let audit = audit(&req)?;
        // Only the credential in the request head counts; the request's own `Authorization` is
        // the caller's and is stripped like every other identity header.
        let token = match (state.takes_assertions, &credential) {
            (true, Credential::Assertion(token)) | (false, Credential::CallerToken(token)) => token,
            (takes_assertions, _) => return Err(Failure::OtherCredential { takes_assertions }),
        };
        // A caller's own token refused here is the caller's failure; a relay assertion refused
        // here is not (the caller's token passed at the relay): `Failure::status` marks only the
        // former.
        let identity =
            state
                .live
                .current()
                .auth
                .authenticate(token)
                .await
                .map_err(|error| Failure::Unauthenticated {
                    error,
                    caller_token: !state.takes_assertions,
                })?;
        audit.set(|f| {
            f.caller = Some(identity.user.clone());
            f.groups = identity.groups.clone();
        });
        req.extensions_mut().insert(identity);
        next.run(req).await
    }
}

/// Sets who the apiserver sees: the caller, impersonated with the agent's own credential, or
/// (passthrough) the cluster token the caller sent, after a TokenReview.
#[derive(Clone)]
pub struct Impersonate(Arc<AgentState>);

impl Step for Impersonate {
    type Path = AgentPath;

    async fn run(self, mut req: Request<Body>, next: Next<Self>) -> Answer {
        let state = &self.0;
        let live = state.live.current();
        let identity: Identity = take(&mut req)?;
        match passthrough::cluster_token(req.headers())? {
            Some(cluster_token) => {
                if !live.mode.allows_passthrough() {
                    return Err(Failure::PassthroughOff);
                }
                let audit = audit(&req)?;
                let reviewed = live
                    .reviewer
                    .review(&state.apiserver, &identity.user, &cluster_token)
                    .await?;
                audit.set(|f| f.cluster_user = Some(reviewed.user.clone()));
                debug!(caller = %identity.user, cluster_user = %reviewed.user, "passthrough");
                crate::impersonation::apply_passthrough(req.headers_mut(), &cluster_token)
                    .map_err(|e| Failure::UnforwardableClusterToken(e.to_string()))?;
            }
            None => {
                if !live.mode.allows_identity() {
                    return Err(Failure::IdentityOff);
                }
                let agent_token = state
                    .apiserver
                    .bearer()
                    .map_err(|e| Failure::NoAgentCredential(e.to_string()))?;
                crate::impersonation::apply_as_agent(req.headers_mut(), &identity, agent_token.as_deref())
                    .map_err(|e| Failure::Inexpressible(e.to_string()))?;
                // Only now may the request present the agent's client certificate (Upstream).
                req.extensions_mut().insert(Acting::Agent);
            }
        }
        next.run(req).await
    }
}

/// Sends the request to the configured apiserver, whatever its URI said, and records the
/// answer's status.
#[derive(Clone)]
pub struct Upstream(Arc<AgentState>);

impl tower::Service<Request<Body>> for Upstream {
    type Response = Response<Incoming>;
    type Error = Failure;
    type Future = StepFuture<Response<Incoming>, Failure>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(upstream(self.0.clone(), req))
    }
}

async fn upstream(state: Arc<AgentState>, mut req: Request<Body>) -> Answer {
    let audit: Audit = take(&mut req)?;
    let long_running = forward::is_long_running(&req);
    *req.uri_mut() = state
        .apiserver
        .uri_for(req.uri())
        .map_err(|e| Failure::BadPath(e.to_string()))?;
    // The client sets Host from the apiserver URI.
    req.headers_mut().remove(HOST);
    // Fail closed: without the mark Impersonate sets, the request goes as the caller's own, over a
    // connection that presents no client certificate of the agent's.
    let acting = req.extensions().get::<Acting>().copied().unwrap_or(Acting::Caller);
    let client = state.apiserver.client(long_running, acting);
    // Copied only for the debug line below, and only when it will be written.
    let shown = tracing::enabled!(tracing::Level::DEBUG).then(|| (req.method().clone(), req.uri().path().to_owned()));
    let resp = client
        .request(req)
        .await
        .map_err(|e| Failure::ApiserverSilent(e.to_string()))?;
    audit.status(resp.status().as_u16());
    if let Some((method, path)) = shown {
        debug!(%method, %path, long_running, status = resp.status().as_u16(), "response head from the apiserver");
    }
    Ok(resp)
}
