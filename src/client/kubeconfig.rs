//! Kubeconfigs that reach clusters through the relay: written whole
//! (`hawser kubeconfig`) or merged into an existing file (`hawser proxy`).

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_yaml_ng::{Mapping, Value};

use super::ClientError;

/// One context to write: cluster entry, user entry and the context joining them.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Name of the context (and of its cluster and user entries).
    pub name: String,
    /// The server URL.
    pub server: String,
    /// PEM CA certificate(s) to trust for the server, if not the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The user's credential: a fixed token, or an exec plugin.
    pub user: User,
}

/// How kubectl authenticates.
#[derive(Debug, Clone)]
pub enum User {
    /// A bearer token written into the file.
    Token(String),
    /// `command args...` printing an ExecCredential.
    Exec {
        /// The plugin binary.
        command: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
}

fn entry_values(entry: &Entry) -> (Value, Value, Value) {
    let mut cluster = Mapping::new();
    cluster.insert("server".into(), entry.server.clone().into());
    if let Some(pem) = &entry.ca_pem {
        cluster.insert(
            "certificate-authority-data".into(),
            base64::engine::general_purpose::STANDARD.encode(pem).into(),
        );
    }
    let user: Value = match &entry.user {
        User::Token(token) => {
            let mut user = Mapping::new();
            user.insert("token".into(), token.clone().into());
            user.into()
        }
        User::Exec { command, args } => {
            let mut exec = Mapping::new();
            exec.insert("apiVersion".into(), "client.authentication.k8s.io/v1".into());
            exec.insert("command".into(), command.display().to_string().into());
            exec.insert(
                "args".into(),
                Value::Sequence(args.iter().map(|a| a.clone().into()).collect()),
            );
            exec.insert("interactiveMode".into(), "Never".into());
            exec.insert("provideClusterInfo".into(), false.into());
            let mut user = Mapping::new();
            user.insert("exec".into(), exec.into());
            user.into()
        }
    };
    let named = |key: &str, value: Value| {
        let mut m = Mapping::new();
        m.insert("name".into(), entry.name.clone().into());
        m.insert(key.into(), value);
        Value::Mapping(m)
    };
    let mut context = Mapping::new();
    context.insert("cluster".into(), entry.name.clone().into());
    context.insert("user".into(), entry.name.clone().into());
    (
        named("cluster", cluster.into()),
        named("user", user),
        named("context", context.into()),
    )
}

/// Merges `entries` into `config` (replacing same-named entries), setting
/// current-context to the first entry if none is set.
pub fn merge(config: &mut Value, entries: &[Entry]) {
    if !config.is_mapping() {
        *config = Value::Mapping(Mapping::new());
    }
    let map = config.as_mapping_mut().expect("a mapping");
    map.entry("apiVersion".into()).or_insert("v1".into());
    map.entry("kind".into()).or_insert("Config".into());
    for entry in entries {
        let (cluster, user, context) = entry_values(entry);
        for (list, value) in [("clusters", cluster), ("users", user), ("contexts", context)] {
            let seq = map.entry(list.into()).or_insert(Value::Sequence(Vec::new()));
            if !seq.is_sequence() {
                *seq = Value::Sequence(Vec::new());
            }
            let items = seq.as_sequence_mut().expect("a sequence");
            items.retain(|item| item.get("name").and_then(Value::as_str) != Some(entry.name.as_str()));
            items.push(value);
        }
    }
    let current = map
        .get("current-context")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .is_some();
    if !current && let Some(first) = entries.first() {
        map.insert("current-context".into(), first.name.clone().into());
    }
}

/// A whole kubeconfig holding `entries`, as YAML.
pub fn render(entries: &[Entry]) -> String {
    let mut config = Value::Null;
    merge(&mut config, entries);
    serde_yaml_ng::to_string(&config).unwrap_or_default()
}

/// Merges `entries` into the kubeconfig at `path` (created if missing, mode 0600).
///
/// Holds `PATH.lock` (the lock file client-go takes when it edits a
/// kubeconfig) so concurrent writers do not lose each other's contexts, and
/// replaces the file by rename so a concurrent reader such as kubectl sees the
/// old file or the new one, never a half-written one.
pub fn merge_into_file(path: &Path, entries: &[Entry]) -> Result<(), ClientError> {
    // Follow a symlinked kubeconfig so the rename replaces its target, not the link.
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::file(dir, e))?;
    }
    let _lock = FileLock::acquire(&path)?;
    let mut config = match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            serde_yaml_ng::from_str(&text).map_err(|e| ClientError::file(&path, format!("not a kubeconfig: {e}")))?
        }
        Ok(_) => Value::Null,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => return Err(ClientError::file(&path, e)),
    };
    merge(&mut config, entries);
    let text = serde_yaml_ng::to_string(&config).map_err(|e| ClientError::file(&path, e))?;
    let mut temp = path.clone().into_os_string();
    temp.push(format!(".hawser-{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    crate::tls::write_private(&temp, text.as_bytes())?;
    std::fs::rename(&temp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        ClientError::file(&path, e)
    })
}

/// An exclusive `PATH.lock` file, removed on drop.
struct FileLock(PathBuf);

impl FileLock {
    /// How long to wait for another writer before giving up.
    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    fn acquire(path: &Path) -> Result<Self, ClientError> {
        let mut lock = path.to_owned().into_os_string();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        let deadline = std::time::Instant::now() + Self::WAIT;
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(_) => return Ok(Self(lock)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(ClientError::file(
                        &lock,
                        "held by another writer for 5 s; remove it if no kubectl or hawser is editing the kubeconfig",
                    ));
                }
                Err(e) => return Err(ClientError::file(&lock, e)),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The kubeconfig path kubectl would use: `--kubeconfig`, else the first of
/// `KUBECONFIG`, else `~/.kube/config`.
pub fn default_path(explicit: Option<&Path>) -> Result<PathBuf, ClientError> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(first) = std::env::var_os("KUBECONFIG").and_then(|v| std::env::split_paths(&v).next())
        && !first.as_os_str().is_empty()
    {
        return Ok(first);
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| ClientError::Usage("HOME is not set; pass --kubeconfig".into()))?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            server: format!("https://relay/clusters/{name}"),
            ca_pem: Some(b"PEM".to_vec()),
            user: User::Exec {
                command: "/bin/hawser".into(),
                args: vec!["token".into()],
            },
        }
    }

    #[test]
    fn merge_keeps_other_entries_and_replaces_ours() {
        let mut config: Value = serde_yaml_ng::from_str(
            "apiVersion: v1\nkind: Config\ncurrent-context: mine\nclusters:\n- name: mine\n  cluster: {server: https://x}\n- name: hawser-a\n  cluster: {server: https://old}\n",
        )
        .unwrap();
        merge(&mut config, &[entry("hawser-a"), entry("hawser-b")]);
        let clusters = config["clusters"].as_sequence().unwrap();
        assert_eq!(clusters.len(), 3);
        assert_eq!(clusters[0]["name"], "mine");
        let a = clusters.iter().find(|c| c["name"] == "hawser-a").unwrap();
        assert_eq!(a["cluster"]["server"], "https://relay/clusters/hawser-a");
        assert_eq!(config["current-context"], "mine");
        assert_eq!(config["users"][0]["user"]["exec"]["command"], "/bin/hawser");
    }

    #[test]
    fn render_sets_current_context() {
        let text = render(&[entry("hawser-a")]);
        let config: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(config["current-context"], "hawser-a");
        assert_eq!(config["clusters"][0]["cluster"]["certificate-authority-data"], "UEVN");
    }

    #[test]
    fn concurrent_merges_keep_every_context_and_the_file_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || merge_into_file(&path, &[entry(&format!("hawser-{i}"))]))
            })
            .collect();
        for writer in writers {
            writer.join().unwrap().unwrap();
        }
        let config: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config["contexts"].as_sequence().unwrap().len(), 8);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["config"], "no lock or temporary file is left behind");
    }

    #[test]
    fn a_symlinked_kubeconfig_stays_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("config");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        merge_into_file(&link, &[entry("hawser-a")]).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::read_to_string(&target).unwrap().contains("hawser-a"));
    }
}
