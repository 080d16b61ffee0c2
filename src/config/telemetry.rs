//! `[telemetry]` (OpenTelemetry traces and metrics over OTLP) and `[admin]` (the Prometheus
//! `/metrics` listener), the same tables in the relay's and the agent's configuration.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[telemetry]`: where traces and metrics go, and which requests are traced.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC endpoint of a collector (`http://host:4317`); unset: nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// Share of the traces this process starts that are sampled (0 to 1). A caller's sampled
    /// `traceparent` is followed whatever the ratio (parent-based).
    pub sampling_ratio: f64,
    /// Whether request spans carry the caller's username (`enduser.id`).
    pub record_user: bool,
    /// Seconds between metric exports over OTLP.
    pub metrics_export_secs: u64,
    /// `service.name` of the exported data; defaults to `hawser-relay` or `hawser-agent`.
    pub service_name: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sampling_ratio: 0.01,
            record_user: false,
            metrics_export_secs: 60,
            service_name: None,
        }
    }
}

impl TelemetryConfig {
    /// Checks the table once at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|_| format!("telemetry.otlp_endpoint: {endpoint:?} is not a URL"))?;
            // A path is OTLP over HTTP's (`/v1/traces`, port 4318): gRPC would fail at every export.
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            if uri.scheme_str() != Some("http") || uri.host().is_none() || path != "/" {
                return Err(format!(
                    "telemetry.otlp_endpoint: {endpoint:?}: use http://HOST:PORT (OTLP over gRPC; a collector next to \
                     the relay or agent, such as a sidecar or node agent)"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err("telemetry.sampling_ratio: between 0 and 1".into());
        }
        if !(1..=3600).contains(&self.metrics_export_secs) {
            return Err("telemetry.metrics_export_secs: between 1 and 3600".into());
        }
        if let Some(name) = &self.service_name
            && (name.is_empty() || name.chars().any(char::is_control))
        {
            return Err("telemetry.service_name: a non-empty name without control characters".into());
        }
        Ok(())
    }
}

/// `[admin]`: a plain-HTTP listener for operators and scrapers, apart from the callers' port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where `/metrics` (Prometheus), `/healthz` and `/readyz` are served; unset: nowhere.
    pub listen: Option<SocketAddr>,
}

impl AdminConfig {
    /// Checks the table once at start-up: never one of the `taken` addresses (the callers' and
    /// agents' ports), which carry TLS and authenticated callers only.
    pub fn validate(&self, taken: &[SocketAddr]) -> Result<(), String> {
        // Port 0 asks the kernel for a free port, which is never one already bound.
        if let Some(listen) = self.listen
            && listen.port() != 0
            && taken.iter().any(|t| {
                t.port() == listen.port()
                    && (t.ip() == listen.ip() || t.ip().is_unspecified() || listen.ip().is_unspecified())
            })
        {
            return Err(format!(
                "admin.listen: {listen} is a port of the relay's callers or agents; give the admin listener a port of its own"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(listen: &str) -> AdminConfig {
        AdminConfig {
            listen: Some(listen.parse().unwrap()),
        }
    }

    #[test]
    fn the_admin_port_is_never_the_callers_port() {
        let callers: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert!(admin("127.0.0.1:8443").validate(&[callers]).is_err());
        assert!(admin("0.0.0.0:8443").validate(&[callers]).is_err());
        assert!(admin("127.0.0.1:9464").validate(&[callers]).is_ok());
    }

    #[test]
    fn port_zero_is_a_free_port_not_the_callers_port_zero() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(admin("127.0.0.1:0").validate(&[any]).is_ok());
        assert!(
            admin("127.0.0.1:0")
                .validate(&["127.0.0.1:8443".parse().unwrap()])
                .is_ok()
        );
        assert!(admin("127.0.0.1:8443").validate(&[any]).is_ok());
    }

    #[test]
    fn the_otlp_endpoint_is_a_grpc_collector_over_http_without_a_path() {
        let endpoint = |e: &str| TelemetryConfig {
            otlp_endpoint: Some(e.into()),
            ..TelemetryConfig::default()
        };
        assert!(endpoint("http://127.0.0.1:4317").validate().is_ok());
        assert!(endpoint("http://collector:4317/").validate().is_ok());
        for bad in [
            "https://collector:4317",
            "collector:4317",
            "http://127.0.0.1:4318/v1/traces",
            "http://c:4317/?x=1",
        ] {
            let error = endpoint(bad).validate().unwrap_err();
            assert!(error.contains("use http://HOST:PORT"), "{bad}: {error}");
        }
    }
}
