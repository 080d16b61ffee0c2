//! `hawser token`: the client.authentication.k8s.io/v1 exec credential
//! plugin kubectl runs to get the caller's token, and `hawser token issue`.

use std::path::Path;
use std::time::Duration;

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

/// Parses a duration such as `90s`, `30m`, `1h` or `7d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_ttl("1").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("5w").is_err());
    }

    #[test]
    fn exec_credential_shape() {
        let v: serde_json::Value = serde_json::from_str(&exec_credential("abc")).unwrap();
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(v["status"]["token"], "abc");
    }
}
