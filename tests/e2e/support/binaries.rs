//! Builds the test bed's Go binaries once, cached under `target/testbed`.
//! A file lock serialises builds across test binaries running in parallel;
//! a stamp of every input decides whether a rebuild is due.

use std::fs::{self, File};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// Paths of the built test-bed binaries.
#[derive(Debug)]
pub struct Binaries {
    /// kube-apiserver of the pinned release.
    pub kube_apiserver: PathBuf,
    /// kubectl of the pinned release.
    pub kubectl: PathBuf,
    /// kubectl 1.32 (`tests/testbed/kubectl-1.32`), for the routes that run the suite with an
    /// older kubectl; `kubectl_1_32_version()` says which release.
    pub kubectl_1_32: PathBuf,
    /// etcd server of the version that release requires.
    pub etcd: PathBuf,
    /// The test kubelet (exec, attach, logs, port-forward as local processes).
    pub testkubelet: PathBuf,
    /// Runs a command and kills it when our lifeline pipe closes.
    pub reaper: PathBuf,
}

/// The built binaries, building them first if any input changed.
pub fn binaries() -> Result<&'static Binaries> {
    static BUILT: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn testbed_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed")
}

fn cache_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp; keep the binaries beside it.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("testbed")
}

fn build() -> Result<Binaries> {
    let source = testbed_source();
    let cache = cache_dir();
    let bin = cache.join("bin");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let lock = File::create(cache.join("lock"))?;
    lock.lock().context("locking the test bed build")?;

    let binaries = Binaries {
        kube_apiserver: bin.join("kube-apiserver"),
        kubectl: bin.join("kubectl"),
        kubectl_1_32: bin.join("kubectl-1.32"),
        etcd: bin.join("etcd"),
        testkubelet: bin.join("testkubelet"),
        reaper: bin.join("reaper"),
    };
    let go_version = go_version()?;
    let stamp = stamp(&source, &go_version)?;
    let stamp_file = cache.join("stamp");
    let all_built = [
        &binaries.kube_apiserver,
        &binaries.kubectl,
        &binaries.kubectl_1_32,
        &binaries.etcd,
        &binaries.testkubelet,
        &binaries.reaper,
    ]
    .iter()
    .all(|p| p.is_file());
    if all_built && fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(binaries);
    }

    eprintln!(
        "building the test bed into {} ({go_version}; a cold build takes about 7 minutes)",
        bin.display()
    );
    let status = Command::new(source.join("build.sh"))
        .arg(&bin)
        .status()
        .context("running tests/testbed/build.sh")?;
    if !status.success() {
        bail!(
            "tests/testbed/build.sh failed ({status}); run it by hand to see why: tests/testbed/build.sh {}",
            bin.display()
        );
    }
    fs::write(&stamp_file, &stamp)?;
    Ok(binaries)
}

fn go_version() -> Result<String> {
    let out = Command::new("go").arg("version").output().map_err(|e| {
        anyhow::anyhow!(
            "the test bed needs Go (the version tests/testbed/go.mod names, or newer) to build kube-apiserver, \
             kubectl and etcd, and `go` could not be run ({e}); install Go and put it on PATH"
        )
    })?;
    if !out.status.success() {
        bail!("`go version` failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A hash of everything the build reads: scripts, module files, Go sources, Go version
/// (of every module under tests/testbed, the kubectl-1.32 one included).
fn stamp(source: &Path, go_version: &str) -> Result<String> {
    let mut files = Vec::new();
    collect_inputs(source, &mut files)?;
    files.sort();
    let mut hasher = DefaultHasher::new();
    go_version.hash(&mut hasher);
    for file in &files {
        file.strip_prefix(source).unwrap_or(file).hash(&mut hasher);
        fs::read(file)?.hash(&mut hasher);
    }
    Ok(format!("{:016x}\n", hasher.finish()))
}

fn collect_inputs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_inputs(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "go" || e == "mod" || e == "sum" || e == "sh")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The Kubernetes release the test bed pins (`k8s.io/kubernetes` in tests/testbed/go.mod).
pub fn pinned_kubernetes_version() -> Result<String> {
    let go_mod = fs::read_to_string(testbed_source().join("go.mod"))?;
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .context("tests/testbed/go.mod does not require k8s.io/kubernetes")
}

/// The release kubectl 1.32 is built from: `k8s.io/kubectl` v0.32.P in
/// tests/testbed/kubectl-1.32/go.mod is the staging module of Kubernetes v1.32.P.
pub fn kubectl_1_32_version() -> Result<String> {
    let go_mod = fs::read_to_string(testbed_source().join("kubectl-1.32/go.mod"))?;
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubectl "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.strip_prefix("v0."))
        .map(|v| format!("v1.{v}"))
        .context("tests/testbed/kubectl-1.32/go.mod does not require k8s.io/kubectl v0.N.P")
}
