//! Every way the agent turns a request down or fails it, as one typed error, and the one function
//! that decides each one's HTTP status, Kubernetes reason and failed-authentication mark
//! ([`Failure::status`]).

use std::time::Duration;

use crate::auth::AuthError;
use crate::status::{AuthFailure, HttpError};

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
}
