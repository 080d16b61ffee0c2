//! Every way the agent turns a request down or fails it, as one typed error, and the one function
//! that decides each one's HTTP status, Kubernetes reason and failed-authentication mark
//! ([`Failure::status`]), and its reason in the `hawser.refusals` metric ([`Failure::reason`]).

use std::time::Duration;

use crate::auth::AuthError;
use crate::status::{AuthFailure, HttpError};
use crate::telemetry::metrics::attribute_values;

attribute_values! {
    /// The kind of an agent's own answer: `hawser.reason` of `hawser.refusals` at the agent.
    pub enum Reason: "hawser.reason" {
        /// 405.
        MethodNotAllowed = "method_not_allowed",
        /// 400.
        BadRequest = "bad_request",
        /// 401: a credential of the other trust model.
        OtherCredential = "other_credential",
        /// 401: the relay assertion or the caller's token failed its checks.
        Unauthenticated = "unauthenticated",
        /// 503: the issuer's keys are out of reach.
        IssuerUnavailable = "issuer_unavailable",
        /// 401: the cluster token is malformed, refused by TokenReview, or cannot be sent on.
        ClusterTokenRefused = "cluster_token_refused",
        /// 503: TokenReview could not be asked.
        ReviewUnavailable = "review_unavailable",
        /// 429: the caller's TokenReviews are used up for now.
        ReviewsExhausted = "reviews_exhausted",
        /// 403: a cluster token where the mode takes none, or none where it takes only those.
        WrongMode = "wrong_mode",
        /// 500.
        Internal = "internal",
        /// 502.
        BadGateway = "bad_gateway",
    }
}

/// Why the agent answers a request itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// CONNECT: the Kubernetes API never uses it.
    #[error("CONNECT is not forwarded")]
    Connect,
    /// A path the apiserver would not decode.
    #[error("{0}")]
    Undecodable(String),
    /// A credential of the other trust model.
    #[error("this agent takes {}", if *.takes_assertions { "relay assertions only" } else { "callers' own tokens only" })]
    OtherCredential {
        /// Whether this agent takes relay assertions.
        takes_assertions: bool,
    },
    /// The credential did not authenticate; `caller_token` when it was the caller's own token
    /// (the caller's failure), not a relay assertion (which passed at the relay).
    #[error("{error}")]
    Unauthenticated {
        /// Why.
        error: AuthError,
        /// A caller's own token, not a relay assertion.
        caller_token: bool,
    },
    /// Several `Hawser-Cluster-Authorization` headers.
    #[error("more than one Hawser-Cluster-Authorization header")]
    SeveralClusterTokens,
    /// A `Hawser-Cluster-Authorization` that is not `Bearer <token>`.
    #[error("Hawser-Cluster-Authorization must be \"Bearer <token>\"")]
    MalformedClusterToken,
    /// TokenReview refused the cluster token.
    #[error("the cluster token was rejected: {0}")]
    ClusterTokenRefused(String),
    /// TokenReview could not be asked, or did not answer.
    #[error("cannot check the cluster token: {0}")]
    ReviewUnavailable(String),
    /// The caller used up its TokenReviews for now.
    #[error(
        "too many cluster-token reviews for {caller}: at most {per_minute} per minute \
         (passthrough.reviews_per_caller_per_minute)"
    )]
    ReviewsExhausted {
        /// The caller (relay username).
        caller: String,
        /// The configured rate.
        per_minute: u32,
        /// Until the next review.
        wait: Duration,
    },
    /// A cluster token where this agent takes none.
    #[error(
        "this cluster does not accept cluster tokens (Hawser-Cluster-Authorization); its agent runs in identity mode"
    )]
    PassthroughOff,
    /// No cluster token where this agent takes only those.
    #[error("this cluster accepts only callers' own cluster tokens: run `hawser proxy --cluster-token-file FILE`")]
    IdentityOff,
    /// The cluster token cannot be put in a header.
    #[error("cannot forward the cluster token: {0}")]
    UnforwardableClusterToken(String),
    /// The agent's own apiserver credential is missing.
    #[error("the agent has no credential for the apiserver: {0}")]
    NoAgentCredential(String),
    /// The caller's identity cannot be expressed as impersonation headers.
    #[error("cannot express the caller's identity: {0}")]
    Inexpressible(String),
    /// The path cannot be put under the apiserver's URL.
    #[error("bad request path: {0}")]
    BadPath(String),
    /// The apiserver gave no response.
    #[error("the apiserver did not answer: {0}")]
    ApiserverSilent(String),
    /// A `101` for a request that asked for no upgrade.
    #[error("the apiserver switched protocols for a request that asked for no upgrade")]
    UnaskedUpgrade,
    /// A step of the request path found nothing where an outer step should have put it.
    #[error("internal error: the agent's request path is miswired ({0} missing)")]
    Miswired(&'static str),
}

impl Failure {
    /// The kind of answer, for the `hawser.refusals` metric.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Connect => Reason::MethodNotAllowed,
            Self::Undecodable(_) | Self::SeveralClusterTokens | Self::BadPath(_) => Reason::BadRequest,
            Self::OtherCredential { .. } => Reason::OtherCredential,
            Self::Unauthenticated {
                error: AuthError::ProviderUnavailable(_),
                ..
            } => Reason::IssuerUnavailable,
            Self::Unauthenticated { .. } => Reason::Unauthenticated,
            Self::MalformedClusterToken | Self::ClusterTokenRefused(_) | Self::UnforwardableClusterToken(_) => {
                Reason::ClusterTokenRefused
            }
            Self::ReviewUnavailable(_) => Reason::ReviewUnavailable,
            Self::ReviewsExhausted { .. } => Reason::ReviewsExhausted,
            Self::PassthroughOff | Self::IdentityOff => Reason::WrongMode,
            Self::NoAgentCredential(_) | Self::Inexpressible(_) | Self::Miswired(_) => Reason::Internal,
            Self::ApiserverSilent(_) | Self::UnaskedUpgrade => Reason::BadGateway,
        }
    }

    /// The answer to the relay: the Status of [`Failure::status`], counted in `hawser.refusals`.
    pub fn answer(&self) -> HttpError {
        crate::telemetry::metrics::metrics().refused(self.reason());
        self.status()
    }

    /// The one place that decides each failure's status code, reason and mark.
    pub fn status(&self) -> HttpError {
        let message = self.to_string();
        match self {
            Self::Connect => HttpError::method_not_allowed(message),
            Self::Undecodable(_) | Self::SeveralClusterTokens | Self::BadPath(_) => HttpError::bad_request(message),
            Self::OtherCredential { .. } | Self::MalformedClusterToken | Self::UnforwardableClusterToken(_) => {
                HttpError::unauthorized(message)
            }
            Self::Unauthenticated { error, caller_token } => {
                let status = HttpError::from(error.clone());
                if *caller_token && error.status() == http::StatusCode::UNAUTHORIZED {
                    status.auth_failed(AuthFailure::CallerToken)
                } else {
                    status
                }
            }
            Self::ClusterTokenRefused(_) => HttpError::unauthorized(message).auth_failed(AuthFailure::ClusterToken),
            Self::ReviewUnavailable(_) => HttpError::unavailable(message),
            Self::ReviewsExhausted { wait, .. } => HttpError::too_many_requests(message).retry_after(*wait),
            Self::PassthroughOff | Self::IdentityOff => HttpError::forbidden(message),
            Self::NoAgentCredential(_) | Self::Inexpressible(_) | Self::Miswired(_) => HttpError::internal(message),
            Self::ApiserverSilent(_) | Self::UnaskedUpgrade => HttpError::bad_gateway(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use crate::telemetry::metrics::Values;

    use super::*;

    #[test]
    fn each_failure_has_its_status_and_only_the_callers_own_credentials_are_marked() {
        let cases = [
            (Failure::Connect, StatusCode::METHOD_NOT_ALLOWED, None),
            (
                Failure::Unauthenticated {
                    error: AuthError::Expired,
                    caller_token: true,
                },
                StatusCode::UNAUTHORIZED,
                Some(AuthFailure::CallerToken),
            ),
            (
                Failure::Unauthenticated {
                    error: AuthError::Expired,
                    caller_token: false,
                },
                StatusCode::UNAUTHORIZED,
                None,
            ),
            (
                Failure::Unauthenticated {
                    error: AuthError::ProviderUnavailable("down".into()),
                    caller_token: true,
                },
                StatusCode::SERVICE_UNAVAILABLE,
                None,
            ),
            (
                Failure::ClusterTokenRefused("expired".into()),
                StatusCode::UNAUTHORIZED,
                Some(AuthFailure::ClusterToken),
            ),
            (Failure::MalformedClusterToken, StatusCode::UNAUTHORIZED, None),
            (Failure::IdentityOff, StatusCode::FORBIDDEN, None),
            (
                Failure::ReviewUnavailable("x".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                None,
            ),
            (
                Failure::Inexpressible("x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
            ),
            (Failure::ApiserverSilent("x".into()), StatusCode::BAD_GATEWAY, None),
        ];
        for (failure, code, mark) in cases {
            let status = failure.status();
            assert_eq!((status.code, status.auth_failed), (code, mark), "{failure}");
        }
    }

    /// One failure of each kind; the match below fails to compile when a kind is added, so that
    /// it gets a sample here too.
    fn one_of_each() -> Vec<Failure> {
        let x = || "x".to_owned();
        let all = vec![
            Failure::Connect,
            Failure::Undecodable(x()),
            Failure::OtherCredential { takes_assertions: true },
            Failure::Unauthenticated {
                error: AuthError::Expired,
                caller_token: false,
            },
            Failure::Unauthenticated {
                error: AuthError::ProviderUnavailable(x()),
                caller_token: false,
            },
            Failure::SeveralClusterTokens,
            Failure::MalformedClusterToken,
            Failure::ClusterTokenRefused(x()),
            Failure::ReviewUnavailable(x()),
            Failure::ReviewsExhausted {
                caller: x(),
                per_minute: 1,
                wait: Duration::from_secs(1),
            },
            Failure::PassthroughOff,
            Failure::IdentityOff,
            Failure::UnforwardableClusterToken(x()),
            Failure::NoAgentCredential(x()),
            Failure::Inexpressible(x()),
            Failure::BadPath(x()),
            Failure::ApiserverSilent(x()),
            Failure::UnaskedUpgrade,
            Failure::Miswired("x"),
        ];
        let mut kinds = std::collections::HashSet::new();
        for failure in &all {
            let kind = match failure {
                Failure::Connect => 0,
                Failure::Undecodable(_) => 1,
                Failure::OtherCredential { .. } => 2,
                Failure::Unauthenticated { .. } => 3,
                Failure::SeveralClusterTokens => 4,
                Failure::MalformedClusterToken => 5,
                Failure::ClusterTokenRefused(_) => 6,
                Failure::ReviewUnavailable(_) => 7,
                Failure::ReviewsExhausted { .. } => 8,
                Failure::PassthroughOff => 9,
                Failure::IdentityOff => 10,
                Failure::UnforwardableClusterToken(_) => 11,
                Failure::NoAgentCredential(_) => 12,
                Failure::Inexpressible(_) => 13,
                Failure::BadPath(_) => 14,
                Failure::ApiserverSilent(_) => 15,
                Failure::UnaskedUpgrade => 16,
                Failure::Miswired(_) => 17,
            };
            kinds.insert(kind);
        }
        assert_eq!(kinds.len(), 18, "a sample of every kind of failure");
        all
    }

    #[test]
    fn every_reason_is_some_failures_and_in_the_docs_at_the_agent() {
        let given: Vec<Reason> = one_of_each().iter().map(Failure::reason).collect();
        for reason in Reason::ALL {
            assert!(given.contains(reason), "no failure has the reason {reason:?}");
        }
        crate::telemetry::metrics::tests::documented::<Reason>("agent");
    }
}
