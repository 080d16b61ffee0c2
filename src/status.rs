//! Errors as kubectl understands them: every refusal or failure that ends an
//! exchange becomes a Kubernetes `Status` object with the matching HTTP code.
//! This renders; which code a failure gets is decided once per side, by
//! `relay::refusal::Refusal::status` and `agent::failure::Failure::status`
//! (and for tokens, by the conversion from `AuthError` below).

use http::{Response, StatusCode, header};
use serde_json::json;

use crate::body::{Body, full};

/// A failure to answer as a Kubernetes `Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HttpError {
    /// The HTTP status code.
    pub code: StatusCode,
    /// The Kubernetes `reason` (Unauthorized, Forbidden, NotFound, ...).
    pub reason: &'static str,
    /// A one-line cause for the caller; never a token.
    pub message: String,
    /// Seconds for `Retry-After` on a 429 (1 when not set).
    pub retry_after_secs: Option<u64>,
    /// Set when the refusal is the caller's failed authentication, so the relay can charge it.
    pub auth_failed: Option<AuthFailure>,
}

/// A credential the caller failed to prove, named in [`crate::proto::AUTH_FAILED_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// The caller's cluster token (passthrough): TokenReview refused it.
    ClusterToken,
    /// The caller's own token, which an agent that takes callers' tokens refused.
    CallerToken,
}

impl AuthFailure {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterToken => "cluster-token",
            Self::CallerToken => "caller-token",
        }
    }
}

impl HttpError {
    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
            retry_after_secs: None,
            auth_failed: None,
        }
    }
    /// 401: no valid credential.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            message: message.into(),
            retry_after_secs: None,
            auth_failed: None,
        }
    }
    /// 403: a valid caller that may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: message.into(),
            retry_after_secs: None,
            auth_failed: None,
        }
    }
    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: message.into(),
            retry_after_secs: None,
            auth_failed: None,
        }
    }
    /// 405: a method the relay and agent never forward (CONNECT).
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: message.into(),
            retry_after_secs: None,
            auth_failed: None,
        }
    }
    /// 429: a limit was reached; kubectl retries after `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::TOO_MANY_REQUESTS,
            reason: "TooManyRequests",
            message: message.into(),
            retry_after_secs: None,
            auth_failed: None,
        }
    }
    /// The same error with `Retry-After` set to `after`, rounded up to whole seconds.
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after_secs = Some(after.as_secs() + u64::from(after.subsec_nanos() > 0));
        self
    }
    /// The same error marked as the caller's failed authentication of `what`.
    pub fn auth_failed(mut self, what: AuthFailure) -> Self {
        self.auth_failed = Some(what);
        self
    }
    /// 500: we could not do our part (never a fallback to another identity).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "InternalError",
            message: message.into(),
            retry_after_secs: None,
            auth_failed: None,
        }
    }
    /// 502: the next hop failed mid-way.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::BAD_GATEWAY,
            reason: "InternalError",
            message: message.into(),
            retry_after_secs: None,
            auth_failed: None,
        }
    }
    /// 503: the next hop is not there now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::SERVICE_UNAVAILABLE,
            reason: "ServiceUnavailable",
            message: message.into(),
            retry_after_secs: None,
            auth_failed: None,
        }
    }

    /// The `Status` response.
    pub fn into_response(self) -> Response<Body> {
        let retry_after =
            (self.code == StatusCode::TOO_MANY_REQUESTS).then(|| self.retry_after_secs.unwrap_or(1).max(1));
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(secs) = retry_after {
            status["details"] = json!({ "retryAfterSeconds": secs });
        }
        let mut resp = Response::new(full(status.to_string()));
        *resp.status_mut() = self.code;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.code == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if let Some(what) = self.auth_failed {
            resp.headers_mut().insert(
                crate::proto::AUTH_FAILED_HEADER,
                header::HeaderValue::from_static(what.as_str()),
            );
        }
        resp
    }
}

impl From<crate::auth::AuthError> for HttpError {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            // Fail closed: no keys means no access, and the caller may retry.
            crate::auth::AuthError::ProviderUnavailable(_) => Self::unavailable(format!("cannot check the token: {e}")),
            _ => Self::unauthorized(format!("Unauthorized: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn too_many_requests_says_when_to_retry_in_the_header_and_the_status() {
        let resp = HttpError::too_many_requests("slow down")
            .retry_after(std::time::Duration::from_millis(12_500))
            .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "13");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["details"]["retryAfterSeconds"], 13);
        let plain = HttpError::too_many_requests("busy").into_response();
        assert_eq!(plain.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn only_a_marked_refusal_says_the_caller_failed_to_authenticate() {
        let marked = HttpError::unauthorized("the cluster token was rejected")
            .auth_failed(AuthFailure::ClusterToken)
            .into_response();
        assert_eq!(marked.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(marked.headers()[crate::proto::AUTH_FAILED_HEADER], "cluster-token");
        for plain in [
            HttpError::unauthorized("no token"),
            HttpError::unavailable("cannot check the cluster token"),
            HttpError::too_many_requests("too many reviews").retry_after(std::time::Duration::from_secs(20)),
        ] {
            let code = plain.code;
            let resp = plain.into_response();
            assert!(
                !resp.headers().contains_key(crate::proto::AUTH_FAILED_HEADER),
                "{code} carries the failed-authentication header"
            );
        }
    }

    #[tokio::test]
    async fn status_json_kubectl_can_read() {
        let resp = HttpError::forbidden("no access to cluster prod").into_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Forbidden");
        assert_eq!(status["code"], 403);
        assert_eq!(status["message"], "no access to cluster prod");
    }
}
