//! Stored logins: `<dir>/logins/<hex sha256(issuer + "\n" + client_id)>.json`, mode 0600 in
//! 0700 directories, replaced by rename so a reader never sees half a file; a lock file beside
//! each login serialises refreshes.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::LoginError;

/// Environment variable naming the config directory (before `$XDG_CONFIG_HOME/hawser`).
pub const DIR_ENV: &str = "HAWSER_CONFIG_DIR";

/// A secret kept in a login file: serialised as is, never shown by Debug.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Masked(String);

impl Masked {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Masked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One login, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLogin {
    /// The issuer URL.
    pub issuer: String,
    /// The client id.
    pub client_id: String,
    /// The CA file the provider was trusted with, if any (for logout's revocation).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The client secret file the login used, if any (its path only).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Where refresh tokens are exchanged.
    pub token_endpoint: String,
    /// Where the refresh token is revoked at logout.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// The credential.
    pub id_token: Masked,
    /// The refresh token, if the provider gave one.
    #[serde(default)]
    pub refresh_token: Option<Masked>,
    /// The ID token's `exp`, seconds since the epoch.
    pub expiry: i64,
}

/// The directory logins live under.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `dir` (its `logins/` folder).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store in `$HAWSER_CONFIG_DIR`, else `$XDG_CONFIG_HOME/hawser`, else
    /// `$HOME/.config/hawser`.
    pub fn from_env() -> Result<Self, LoginError> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let dir = var(DIR_ENV)
            .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("hawser")))
            .or_else(|| var("HOME").map(|d| d.join(".config").join("hawser")))
            .ok_or_else(|| LoginError::Usage(format!("no config directory: set {DIR_ENV} or HOME")))?;
        Ok(Self::at(dir))
    }

    fn logins(&self) -> PathBuf {
        self.dir.join("logins")
    }

    /// The file of the login for (`issuer`, `client_id`).
    pub fn path(&self, issuer: &str, client_id: &str) -> PathBuf {
        let digest = Sha256::digest(format!("{issuer}\n{client_id}").as_bytes());
        self.logins()
            .join(format!("{}.json", data_encoding::HEXLOWER.encode(&digest)))
    }

    /// The stored login, if any.
    pub fn load(&self, issuer: &str, client_id: &str) -> Result<Option<StoredLogin>, LoginError> {
        read(&self.path(issuer, client_id))
    }

    /// Every stored login's file and what it holds (or why it cannot be read).
    #[allow(clippy::type_complexity)]
    pub fn all(&self) -> Result<Vec<(PathBuf, Result<StoredLogin, LoginError>)>, LoginError> {
        let dir = self.logins();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LoginError::store(&dir, e)),
        };
        let mut logins = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| LoginError::store(&dir, e))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let login = read(&path).and_then(|l| l.ok_or_else(|| LoginError::store(&path, "vanished")));
                logins.push((path, login));
            }
        }
        Ok(logins)
    }

    /// Writes `login` atomically: a 0600 temp file in the same directory, then rename.
    pub fn save(&self, login: &StoredLogin) -> Result<(), LoginError> {
        let dir = self.make_dir()?;
        let path = self.path(&login.issuer, &login.client_id);
        let json = serde_json::to_vec_pretty(login).map_err(|e| LoginError::store(&path, e))?;
        let mut suffix = [0u8; 8];
        rand::rng().fill_bytes(&mut suffix);
        let temp = dir.join(format!(".tmp-{}", data_encoding::HEXLOWER.encode(&suffix)));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(LoginError::store(&path, e));
        }
        Ok(())
    }

    /// Deletes the login for (`issuer`, `client_id`); false if there was none.
    pub fn remove(&self, issuer: &str, client_id: &str) -> Result<bool, LoginError> {
        remove_file(&self.path(issuer, client_id))
    }

    /// Takes the exclusive lock beside the login for (`issuer`, `client_id`), waiting for
    /// another process's refresh to end; released when the file is dropped.
    pub async fn lock(&self, issuer: &str, client_id: &str) -> Result<File, LoginError> {
        self.make_dir()?;
        let path = self.path(issuer, client_id).with_extension("lock");
        tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| LoginError::store(&path, e))?;
            file.lock().map_err(|e| LoginError::store(&path, e))?;
            Ok(file)
        })
        .await
        .map_err(|e| LoginError::Usage(format!("taking the login lock: {e}")))?
    }

    fn make_dir(&self) -> Result<PathBuf, LoginError> {
        let dir = self.logins();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| LoginError::store(&dir, e))?;
        Ok(dir)
    }
}

/// Deletes a login file (and its lock file); false if there was none.
pub fn remove_file(path: &Path) -> Result<bool, LoginError> {
    let _ = std::fs::remove_file(path.with_extension("lock"));
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LoginError::store(path, e)),
    }
}

fn read(path: &Path) -> Result<Option<StoredLogin>, LoginError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoginError::store(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LoginError::store(path, format!("not a stored login ({e}): run hawser login again")))
}
