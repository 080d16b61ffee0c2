//! Logging and tracing set-up: `tracing` spans per connection and per
//! stream with structured fields, as text or JSON on stderr, filtered by
//! `RUST_LOG` (default `info`); with a trace exporter, the same spans (the
//! crate's, at info and above, whatever `RUST_LOG` says) go to OpenTelemetry.
//!
//! Log lines carry strings that come from outside: an agent's hello, a relay's
//! welcome, a peer's close reason, a caller's name or path, an apiserver's
//! error text. None may forge a line, so every field value and message is
//! escaped ([`escape`]) before it is written: in text, by the field formatter
//! installed here, whatever the call site wrote; in JSON, by the JSON encoder
//! (a control character is never written raw). Call sites need not remember.

mod budget;
pub mod metrics;
mod otel;
mod tally;
pub mod trace_context;

use std::fmt::{self, Write as _};

pub use otel::{Otel, Service, TelemetryError};
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{Writer, debug_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use budget::LogBudget;

use crate::cli::LogFormat;

/// Installs the global subscriber: the log, and the trace exporter of `otel` if it has one.
pub fn init(format: LogFormat, otel: Option<&Otel>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let log = match format {
        LogFormat::Text => log.fmt_fields(escaping_fields()).boxed(),
        LogFormat::Json => log.json().flatten_event(true).with_current_span(true).boxed(),
    };
    let traces = otel.and_then(Otel::tracer).map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            // No busy/idle time per span: two clock reads on every poll of a request's future.
            .with_tracked_inactivity(false)
            .with_filter(exported())
    });
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(traces)
        .init();
}

/// What goes to the trace exporter: the spans of sampled requests (the relay's `request` and
/// `stream`, the agent's `stream`: made with the target [`trace_context::TRACED`]) and the crate's
/// events at info and above, which become their span events (an event outside them is dropped by
/// the bridge). Connection and tunnel spans live for hours and would make traces of their own.
fn exported() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|meta| {
        if meta.is_span() {
            meta.target() == trace_context::TRACED
        } else {
            meta.target().starts_with("hawser") && *meta.level() <= tracing::Level::INFO
        }
    })
}

/// The text field formatter: `name=value` pairs separated by spaces, the message bare, every
/// value escaped so that no field can start a new line or reorder what a terminal shows, and a
/// value holding a space or `=` quoted, so that it cannot pose as further fields.
pub fn escaping_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    debug_fn(
        |writer: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn fmt::Debug| {
            // `%x` fields are recorded as a Debug that prints their Display; `?x` as Debug.
            let text = format!("{value:?}");
            if field.name() == "message" {
                write!(writer, "{}", escape(&text))
            } else if text.contains(|c: char| c.is_whitespace() || c == '=') {
                let quoted = text.replace('\\', "\\\\").replace('"', "\\\"");
                write!(writer, "{}=\"{}\"", field.name(), escape(&quoted))
            } else {
                write!(writer, "{}={}", field.name(), escape(&text))
            }
        },
    )
    .delimited(" ")
}

/// `text` with every character that could break or disguise a log line escaped: control
/// characters (`\n`, `\r`, ESC, ...), Unicode line and paragraph separators, and the
/// bidirectional overrides that make a terminal show text in another order. Everything else,
/// non-ASCII letters included, is kept as is.
pub fn escape(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// See [`escape`].
pub struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if must_escape(c) {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An error with its sources, one after another (`connecting: tls: invalid peer certificate: ...`):
/// hyper's and rustls' top-level messages alone rarely say what failed.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'                      // line and paragraph separators
            | '\u{200e}' | '\u{200f}' | '\u{061c}'      // directional marks
            | '\u{202a}'..='\u{202e}'                   // embeddings and overrides
            | '\u{2066}'..='\u{2069}'                   // isolates
        )
}

#[cfg(test)]
pub(crate) mod tests;
