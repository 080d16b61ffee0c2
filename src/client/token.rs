//! `hawser token`: the client.authentication.k8s.io/v1 exec credential
//! plugin kubectl runs to get the caller's token, and `hawser token issue`.

use std::path::Path;

use serde_json::json;

use super::ClientError;

/// Environment variable that may hold the caller's token.
pub const TOKEN_ENV: &str = "HAWSER_TOKEN";

/// The caller's token: from `token_file` if given, else `HAWSER_TOKEN`.
pub fn caller_token(token_file: Option<&Path>) -> Result<String, ClientError> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| ClientError::file(path, e))?,
        None => std::env::var(TOKEN_ENV)
            .map_err(|_| ClientError::Usage(format!("no token: pass --token-file or set {TOKEN_ENV}")))?,
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(ClientError::Usage("the token is empty".into()));
    }
    Ok(token)
}

/// The ExecCredential kubectl expects on the plugin's stdout.
pub fn exec_credential(token: &str) -> String {
    json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token},
    })
    .to_string()
}

/// The ExecCredential for a token that expires at `expiry` (RFC 3339): kubectl runs the plugin
/// again then instead of sending an expired token.
pub fn exec_credential_until(token: &str, expiry: &str) -> String {
    json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token, "expirationTimestamp": expiry},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_credential_shape() {
        let v: serde_json::Value = serde_json::from_str(&exec_credential("abc")).unwrap();
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(v["status"]["token"], "abc");
        assert!(v["status"].get("expirationTimestamp").is_none());
        let v: serde_json::Value = serde_json::from_str(&exec_credential_until("abc", "2026-12-01T10:00:00Z")).unwrap();
        assert_eq!(v["status"]["expirationTimestamp"], "2026-12-01T10:00:00Z");
        assert_eq!(v["status"]["token"], "abc");
    }
}
