//! Reading the files the collector appends OTLP JSON lines to, as they grow: from their start,
//! or from the moment a test begins (the shared collector's files hold every earlier test's
//! spans, which a test need not parse).

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};

use super::super::process::wait_for;

/// What arrived in one file, for tests on any thread.
pub struct Received<T>(Mutex<Tail<T>>);

impl<T: Clone> Received<T> {
    /// Everything the collector writes to `path` (which need not exist yet), read with `parse`.
    pub fn new(path: PathBuf, parse: fn(&str) -> Result<Vec<T>>) -> Self {
        Self(Mutex::new(Tail {
            path,
            offset: 0,
            mid_line: false,
            items: Vec::new(),
            parse,
        }))
    }

    /// Only what the collector writes to `path` from now on.
    pub fn from_now(path: PathBuf, parse: fn(&str) -> Result<Vec<T>>) -> Result<Self> {
        let (offset, mid_line) = match File::open(&path) {
            Ok(mut file) => {
                let len = file.metadata()?.len();
                // Starting inside a line (flushed in part), the rest of it is skipped.
                let mut last = [b'\n'];
                if len > 0 {
                    file.seek(SeekFrom::Start(len - 1))?;
                    file.read_exact(&mut last)?;
                }
                (len, last[0] != b'\n')
            }
            Err(e) if e.kind() == ErrorKind::NotFound => (0, false),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        Ok(Self(Mutex::new(Tail {
            path,
            offset,
            mid_line,
            items: Vec::new(),
            parse,
        })))
    }

    /// Everything that has arrived so far.
    pub fn all(&self) -> Result<Vec<T>> {
        Ok(self.tail().read()?.to_vec())
    }

    /// Waits until `check` finds what it looks for in what arrived.
    pub fn wait_for<R>(&self, what: &str, within: Duration, mut check: impl FnMut(&[T]) -> Option<R>) -> Result<R> {
        wait_for(what, within, || Ok(check(self.tail().read()?)))
    }

    fn tail(&self) -> MutexGuard<'_, Tail<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads a file the collector appends lines to: each call parses only the complete lines added
/// since the last (a line may be flushed in parts) and keeps what it parsed.
struct Tail<T> {
    path: PathBuf,
    offset: u64,
    /// Whether `offset` is inside a line whose start was not read.
    mid_line: bool,
    items: Vec<T>,
    parse: fn(&str) -> Result<Vec<T>>,
}

impl<T> Tail<T> {
    /// Everything parsed so far, after reading what was added.
    fn read(&mut self) -> Result<&[T]> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            // The exporter creates it when it starts: nothing has arrived before that.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(&self.items),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut added = Vec::new();
        file.read_to_end(&mut added)?;
        let mut start = 0;
        if self.mid_line {
            let Some(end) = added.iter().position(|&b| b == b'\n') else {
                self.offset += added.len() as u64;
                return Ok(&self.items);
            };
            start = end + 1;
            self.mid_line = false;
        }
        let Some(end) = added.iter().rposition(|&b| b == b'\n').filter(|&end| end >= start) else {
            self.offset += start as u64;
            return Ok(&self.items);
        };
        // Parsed whole before any is kept, so a bad line is reported again, not half-taken.
        let mut parsed = Vec::new();
        for (n, line) in added[start..end].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let text = std::str::from_utf8(line).context("a line that is not UTF-8")?;
            parsed
                .extend((self.parse)(text).with_context(|| {
                    format!("line {} after byte {} of {}", n + 1, self.offset, self.path.display())
                })?);
        }
        self.items.extend(parsed);
        self.offset += end as u64 + 1;
        Ok(&self.items)
    }
}
