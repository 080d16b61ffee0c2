//! Bearer tokens kept in files that another process rotates (projected
//! service-account tokens, CI secrets): re-read when the cached copy is a
//! few seconds old, so a rotation takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token read from file is used before the file is read again.
pub const REFRESH: Duration = Duration::from_secs(10);

/// A token file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("token file {path}: {message}")]
pub struct TokenFileError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A token that lives in a file, cached for [`REFRESH`].
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenFile {
    /// A token source for `path`; nothing is read until [`TokenFile::get`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    /// The file this token is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token, re-read from the file when the cached copy is stale.
    pub fn get(&self) -> Result<String, TokenFileError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, at)) = cached.as_ref()
            && at.elapsed() < REFRESH
        {
            return Ok(token.clone());
        }
        let token = read(&self.path)?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }
}

/// Reads a token file: surrounding whitespace trimmed, never empty.
pub fn read(path: &Path) -> Result<String, TokenFileError> {
    let error = |message: String| TokenFileError {
        path: path.display().to_string(),
        message,
    };
    let token = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(error("empty".into()));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_refuses_empty_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc\n").unwrap();
        let file = TokenFile::new(&path);
        assert_eq!(file.get().unwrap(), "abc");
        std::fs::write(&path, "def").unwrap();
        assert_eq!(file.get().unwrap(), "abc", "cached for REFRESH");
        std::fs::write(&path, "\n").unwrap();
        assert!(read(&path).unwrap_err().to_string().ends_with(": empty"));
        assert!(read(&dir.path().join("missing")).is_err());
    }
}
