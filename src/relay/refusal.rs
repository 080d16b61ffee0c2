//! Every way the relay turns a request down or fails it, as one typed error, and the one function
//! that decides each one's HTTP status and Kubernetes reason ([`Refusal::status`]): call sites
//! say what happened, never which code it is.

use std::time::Duration;

use crate::auth::AuthError;
use crate::status::HttpError;
use crate::telemetry::metrics::attribute_values;
use crate::transport::StreamError;
use crate::wire;

/// Why the relay answers a request itself.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// CONNECT: the Kubernetes API never uses it.
    #[error("CONNECT is not forwarded")]
    Connect,
    /// `/.well-known/jwks.json` on a relay without a built-in issuer.
    #[error("this relay has no built-in issuer")]
    NoIssuer,
    /// The login document on a relay without `[login]`.
    #[error(
        "this relay names no identity provider to log in with ([login] in its config): ask its operator for the issuer and client id"
    )]
    NoLogin,
    /// The assertion JWKS on a relay without `[assertions]`.
    #[error("this relay has no [assertions]")]
    NoAssertions,
    /// A path outside `/clusters/NAME/`.
    #[error("the relay serves /clusters/NAME/..., not {0}")]
    NotAClusterPath(String),
    /// A path the apiserver would not decode.
    #[error("the request path has a malformed percent-escape or is not UTF-8")]
    Undecodable,
    /// A path that is no URI once the cluster prefix is taken off.
    #[error("malformed request path")]
    MalformedPath,
    /// No such cluster (or no plain name).
    #[error("no cluster named {0:?}")]
    UnknownCluster(String),
    /// The caller's address failed to authenticate too often.
    #[error("too many failed authentications from this address; retry in {}s", .0.as_secs())]
    SourceThrottled(Duration),
    /// The caller's token.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The access rules do not let the caller reach the cluster.
    #[error(
        "clusters \"{cluster}\" is forbidden: User \"{user}\" may not reach cluster \"{cluster}\" through this relay"
    )]
    Forbidden {
        /// The cluster.
        cluster: String,
        /// The caller.
        user: String,
    },
    /// No admin access rule names the caller, who asked about the fleet.
    #[error(
        "the fleet is forbidden: User \"{user}\" may not ask this relay about its clusters, agents and relays \
         (no access rule with admin = true names them)"
    )]
    NotAdmin {
        /// The caller.
        user: String,
    },
    /// A method other than GET on the fleet report.
    #[error("{0} is not allowed here: the relay's fleet report answers GET")]
    ReportMethod(http::Method),
    /// The fleet report could not be written.
    #[error("cannot write the fleet report: {0}")]
    CannotReport(String),
    /// A token without the audience of a cluster that takes callers' own tokens.
    #[error(
        "this token is not for cluster \"{cluster}\": its agent takes callers' own tokens, and they must carry the \
         audience \"{audience}\""
    )]
    NotForCluster {
        /// The cluster.
        cluster: String,
        /// Its caller audience.
        audience: String,
    },
    /// A caller token also good at another cluster: never sent on.
    #[error(
        "this token is also good for cluster \"{other}\", so it is not sent to cluster \"{cluster}\": use a token \
         whose only cluster audience is \"{audience}\""
    )]
    AlsoGoodElsewhere {
        /// The cluster asked for.
        cluster: String,
        /// Another cluster the token is good at.
        other: String,
        /// The asked cluster's audience.
        audience: String,
    },
    /// A token bound to another cluster, used at one the relay vouches for.
    #[error("this token is bound to cluster \"{other}\" (its audience), so it is not good at cluster \"{cluster}\"")]
    BoundElsewhere {
        /// The cluster asked for.
        cluster: String,
        /// The cluster the token is bound to.
        other: String,
    },
    /// No assertion key, or minting failed.
    #[error("{0}")]
    CannotVouch(String),
    /// No agent connected.
    #[error("cluster \"{0}\" is offline: no agent is connected")]
    Offline(String),
    /// The caller's own limit on requests in flight.
    #[error("User \"{user}\" has {limit} requests in flight, the most this relay allows one caller")]
    CallerBusy {
        /// The caller.
        user: String,
        /// `limits.max_streams_per_caller`.
        limit: usize,
    },
    /// The tunnel's stream limit held for `open_stream_timeout_secs`.
    #[error("cluster \"{cluster}\" is saturated: no stream free within {wait:?}")]
    Saturated {
        /// The cluster.
        cluster: String,
        /// How long the relay waited.
        wait: Duration,
    },
    /// No stream could be opened, or the head not sent.
    #[error("cluster \"{cluster}\" is unreachable: agent stream failed: {error}")]
    Unreachable {
        /// The cluster.
        cluster: String,
        /// What the stream said.
        error: StreamError,
    },
    /// The request does not fit the framing's bounds.
    #[error("the request cannot be sent to the cluster: {0}")]
    Unsendable(wire::HeadError),
    /// The agent cut the stream because it is shutting down.
    #[error("cluster \"{cluster}\": {}", wire::reset::describe(*.code))]
    AgentShutdown {
        /// The cluster.
        cluster: String,
        /// The reset code.
        code: u64,
    },
    /// Other relays of the fleet hold the cluster's tunnels, and none of them answered.
    #[error("cluster \"{cluster}\" is unreachable: its agents are connected to other relays, and none answered: {why}")]
    PeerUnreachable {
        /// The cluster.
        cluster: String,
        /// Each relay tried and its error.
        why: String,
    },
    /// In a fleet, a relay that has not read the shared registry since it started cannot tell
    /// which relay holds the cluster (a balancer sent a caller before `/readyz` passed).
    #[error(
        "cluster \"{0}\" cannot be routed yet: this relay has not read the fleet's registry (etcd) since it started"
    )]
    RegistryUnread(String),
    /// The tunnel the request went on was lost before a response head (here, or at the relay it
    /// was forwarded to).
    #[error("cluster \"{cluster}\": the agent's tunnel was lost before it answered: {why}")]
    TunnelLost {
        /// The cluster.
        cluster: String,
        /// What the stream said.
        why: String,
    },
    /// The agent gave no response head.
    #[error("cluster \"{cluster}\": the agent did not answer: {why}")]
    NoAnswer {
        /// The cluster.
        cluster: String,
        /// What happened instead.
        why: String,
    },
    /// A `101` for a request that asked for no upgrade.
    #[error("cluster \"{0}\": the agent switched protocols for a request that asked for no upgrade")]
    UnaskedUpgrade(String),
    /// A step of the request path found nothing where an outer step should have put it.
    #[error("internal error: the relay's request path is miswired ({0} missing)")]
    Miswired(&'static str),
}

attribute_values! {
    /// The kind of a relay's refusal: `hawser.reason` of `hawser.refusals` at the relay.
    pub enum Reason: "hawser.reason" {
        /// 405.
        MethodNotAllowed = "method_not_allowed",
        /// 404 for a path the relay does not serve.
        NotFound = "not_found",
        /// 400.
        BadRequest = "bad_request",
        /// 404 for a cluster nobody configured.
        UnknownCluster = "unknown_cluster",
        /// 429: the source failed to authenticate too often.
        SourceThrottled = "source_throttled",
        /// 503: the token's issuer's keys are out of reach.
        IssuerUnavailable = "issuer_unavailable",
        /// 401.
        Unauthenticated = "unauthenticated",
        /// 401: a token not for the cluster asked for.
        TokenNotForCluster = "token_not_for_cluster",
        /// 403.
        Forbidden = "forbidden",
        /// 500.
        Internal = "internal",
        /// 503: no agent anywhere.
        Offline = "offline",
        /// 429: the caller's requests in flight.
        CallerBusy = "caller_busy",
        /// 503: no stream free on the tunnel.
        Saturated = "saturated",
        /// 503: the stream to the agent failed.
        Unreachable = "unreachable",
        /// 503: the relays that hold the cluster did not answer.
        PeerUnreachable = "peer_unreachable",
        /// 502.
        BadGateway = "bad_gateway",
    }
}

impl Refusal {
    /// The kind of refusal, for the `hawser.refusals` metric.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Connect | Self::ReportMethod(_) => Reason::MethodNotAllowed,
            Self::NoIssuer | Self::NoLogin | Self::NoAssertions | Self::NotAClusterPath(_) => Reason::NotFound,
            Self::Undecodable | Self::MalformedPath | Self::Unsendable(_) => Reason::BadRequest,
            Self::UnknownCluster(_) => Reason::UnknownCluster,
            Self::SourceThrottled(_) => Reason::SourceThrottled,
            Self::Auth(AuthError::ProviderUnavailable(_)) => Reason::IssuerUnavailable,
            Self::Auth(_) => Reason::Unauthenticated,
            Self::NotForCluster { .. } | Self::AlsoGoodElsewhere { .. } | Self::BoundElsewhere { .. } => {
                Reason::TokenNotForCluster
            }
            Self::Forbidden { .. } | Self::NotAdmin { .. } => Reason::Forbidden,
            Self::CannotVouch(_) | Self::CannotReport(_) | Self::Miswired(_) => Reason::Internal,
            Self::Offline(_) => Reason::Offline,
            Self::CallerBusy { .. } => Reason::CallerBusy,
            Self::Saturated { .. } => Reason::Saturated,
            Self::Unreachable { .. } | Self::AgentShutdown { .. } | Self::TunnelLost { .. } => Reason::Unreachable,
            Self::PeerUnreachable { .. } | Self::RegistryUnread(_) => Reason::PeerUnreachable,
            Self::NoAnswer { .. } | Self::UnaskedUpgrade(_) => Reason::BadGateway,
        }
    }

    /// The one place that decides each refusal's status code and reason.
    pub fn status(self) -> HttpError {
        let message = self.to_string();
        match self {
            Self::Connect | Self::ReportMethod(_) => HttpError::method_not_allowed(message),
            Self::Undecodable | Self::MalformedPath | Self::Unsendable(_) => HttpError::bad_request(message),
            Self::Auth(e) => e.into(),
            Self::NotForCluster { .. } | Self::AlsoGoodElsewhere { .. } | Self::BoundElsewhere { .. } => {
                HttpError::unauthorized(message)
            }
            Self::Forbidden { .. } | Self::NotAdmin { .. } => HttpError::forbidden(message),
            Self::NoIssuer
            | Self::NoLogin
            | Self::NoAssertions
            | Self::NotAClusterPath(_)
            | Self::UnknownCluster(_) => HttpError::not_found(message),
            Self::SourceThrottled(after) => HttpError::too_many_requests(message).retry_after(after),
            Self::CallerBusy { .. } => HttpError::too_many_requests(message),
            Self::CannotVouch(_) | Self::CannotReport(_) | Self::Miswired(_) => HttpError::internal(message),
            Self::NoAnswer { .. } | Self::UnaskedUpgrade(_) => HttpError::bad_gateway(message),
            Self::Offline(_)
            | Self::Saturated { .. }
            | Self::Unreachable { .. }
            | Self::AgentShutdown { .. }
            | Self::PeerUnreachable { .. }
            | Self::RegistryUnread(_)
            | Self::TunnelLost { .. } => HttpError::unavailable(message),
        }
    }

    /// Whether the tunnel the request went on was lost before any answer: a request that can be
    /// sent again as it was may go on another tunnel.
    pub fn lost_tunnel(&self) -> bool {
        matches!(
            self,
            Self::TunnelLost { .. }
                | Self::Unreachable {
                    error: StreamError::Closed(_),
                    ..
                }
        )
    }

    /// Whether this is the caller failing to authenticate (charged to its address).
    pub fn is_unauthenticated(&self) -> bool {
        match self {
            Self::Auth(e) => !matches!(e, AuthError::ProviderUnavailable(_)),
            Self::NotForCluster { .. } | Self::AlsoGoodElsewhere { .. } | Self::BoundElsewhere { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
