//! The OpenTelemetry pipelines of a relay or agent: a tracer provider exporting sampled spans over
//! OTLP, and a meter provider read by OTLP (periodically) and by Prometheus (on each scrape of the
//! admin listener). Built inside the tokio runtime: the OTLP/gRPC client's connection task runs
//! on it.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::TelemetryConfig;

/// How long one OTLP export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping process waits for the last spans and metrics to go out.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An OTLP exporter.
    #[error("telemetry: the OTLP exporter for {endpoint}: {error}")]
    Otlp {
        /// The collector.
        endpoint: String,
        /// The cause.
        error: String,
    },
    /// The Prometheus exporter.
    #[error("telemetry: the Prometheus exporter: {0}")]
    Prometheus(String),
}

/// What the process is, as its exported data says.
#[derive(Debug, Clone, Copy)]
pub struct Service<'a> {
    /// `service.name`, unless the configuration names another.
    pub name: &'static str,
    /// `service.instance.id`: the relay's or agent's instance.
    pub instance: &'a str,
}

/// A running relay's or agent's telemetry.
pub struct Otel {
    tracer: Option<SdkTracerProvider>,
    meter: SdkMeterProvider,
    prometheus: Option<prometheus::Registry>,
}

impl Otel {
    /// Starts the pipelines `config` asks for; `prometheus`: also keep metrics for `/metrics`.
    /// Installs the meter provider globally (metrics are recorded through it from anywhere).
    pub fn start(config: &TelemetryConfig, prometheus: bool, service: Service<'_>) -> Result<Self, TelemetryError> {
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone().unwrap_or_else(|| service.name.to_owned()))
            .with_attributes([
                KeyValue::new("service.instance.id", service.instance.to_owned()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        let otlp_error = |endpoint: &str| {
            let endpoint = endpoint.to_owned();
            move |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Otlp {
                endpoint,
                error: e.to_string(),
            }
        };
        let tracer = match &config.otlp_endpoint {
            Some(endpoint) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()
                    .map_err(otlp_error(endpoint))?;
                Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        // Sampled or not is decided before a span is made (`trace_context`):
                        // every span that reaches the SDK is one to export.
                        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
                        .with_resource(resource.clone())
                        .build(),
                )
            }
            None => None,
        };
        let mut meter = SdkMeterProvider::builder().with_resource(resource);
        if let Some(endpoint) = &config.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(otlp_error(endpoint))?;
            meter = meter.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(Duration::from_secs(config.metrics_export_secs))
                    .build(),
            );
        }
        let prometheus = if prometheus {
            let registry = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
            meter = meter.with_reader(exporter);
            Some(registry)
        } else {
            None
        };
        crate::telemetry::trace_context::set_sampling(tracer.is_some().then_some(config.sampling_ratio));
        let meter = meter.build();
        opentelemetry::global::set_meter_provider(meter.clone());
        Ok(Self {
            tracer,
            meter,
            prometheus,
        })
    }

    /// The tracer spans are exported with, if traces are exported.
    pub fn tracer(&self) -> Option<SdkTracer> {
        self.tracer.as_ref().map(|p| p.tracer("hawser"))
    }

    /// The registry `/metrics` is rendered from, if metrics are kept for Prometheus.
    pub fn prometheus(&self) -> Option<prometheus::Registry> {
        self.prometheus.clone()
    }

    /// Sends what is still buffered, within a few seconds, and stops the exporters.
    pub fn shutdown(self) {
        // Blocking calls (the batch processor's thread, a last export): off the async workers.
        let stop = move || {
            if let Some(tracer) = &self.tracer {
                let _ = tracer.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
            }
            let _ = self.meter.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(stop)
            }
            _ => stop(),
        }
    }
}
