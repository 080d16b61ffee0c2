use std::sync::{Arc, Mutex};

use tracing::{info, info_span, warn};
use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// A writer that collects everything logged, for assertions.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// Runs `log` under a subscriber formatting as the binary does in `format`, and returns the output.
pub(crate) fn capture(format: LogFormat, log: impl FnOnce()) -> String {
    capture_watched(format, |_| log())
}

/// Like [`capture`], `log` seeing the output so far (to wait for a line instead of sleeping).
pub(crate) fn capture_watched(format: LogFormat, log: impl FnOnce(&Captured)) -> String {
    let out = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG);
    let dispatch = match format {
        LogFormat::Text => tracing::Dispatch::new(builder.fmt_fields(escaping_fields()).finish()),
        LogFormat::Json => tracing::Dispatch::new(builder.json().flatten_event(true).with_current_span(true).finish()),
    };
    tracing::dispatcher::with_default(&dispatch, || log(&out));
    out.text()
}

const FORGED: &str = "x\n2026-01-01T00:00:00Z  INFO agent registered cluster=prod\r\u{1b}[2K\u{202e}";

fn hostile_events() {
    let span = info_span!("stream", request.id = %FORGED);
    let _entered = span.enter();
    let error = std::io::Error::other(FORGED);
    warn!(cluster = %FORGED, agent = ?FORGED, %error, "agent refused");
    info!("message with {FORGED}");
}

#[test]
fn text_lines_escape_every_value_the_message_and_span_fields() {
    let out = capture(LogFormat::Text, hostile_events);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "two events, two lines: {out}");
    assert!(!out.contains('\r') && !out.contains('\u{1b}') && !out.contains('\u{202e}'));
    for line in &lines {
        assert!(
            line.contains("request.id=\"x\\n2026"),
            "span field escaped and quoted: {line}"
        );
    }
    assert!(lines[0].contains("cluster=\"x\\n2026") && lines[0].contains("error=\"x\\n2026"));
    assert!(lines[1].contains("message with x\\n2026"));
}

#[test]
fn json_lines_are_one_object_each_with_the_value_intact() {
    let out = capture(LogFormat::Json, hostile_events);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "two events, two lines: {out}");
    for line in lines {
        let object: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert_eq!(object["span"]["request.id"], FORGED);
    }
}

#[test]
fn escape_keeps_letters_and_escapes_controls() {
    assert_eq!(escape("jürgen").to_string(), "jürgen");
    assert_eq!(escape("a\nb\u{0}c\u{2028}").to_string(), "a\\nb\\u{0}c\\u{2028}");
    assert_eq!(escape("back\\slash \"q\"").to_string(), "back\\slash \"q\"");
}

#[test]
fn a_value_with_spaces_or_equals_cannot_pose_as_more_fields() {
    let out = capture(LogFormat::Text, || {
        info!(agent = %"a cluster=prod session=1", plain = %"b", quoted = %"say \"hi\" \\ ok", "x");
    });
    assert!(out.contains(r#"agent="a cluster=prod session=1""#), "{out}");
    assert!(out.contains("plain=b"), "{out}");
    assert!(out.contains(r#"quoted="say \"hi\" \\ ok""#), "{out}");
}
