//! Builds the test bed's Go binaries once, cached under `target/testbed`.
//! A file lock serialises builds across test binaries running in parallel;
//! a stamp of every input decides whether a rebuild is due: one for the
//! Kubernetes binaries, one for the OpenTelemetry Collector, one for helm, one for the test
//! OpenID provider.

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
    /// The OpenTelemetry Collector (tests/testbed/otelcol), built with its own stamp.
    pub otelcol: PathBuf,
    /// helm (tests/testbed/helm), built with its own stamp.
    pub helm: PathBuf,
    /// The test OpenID provider (tests/testbed/idp), built with its own stamp.
    pub idp: PathBuf,
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
        otelcol: bin.join("otelcol"),
        helm: bin.join("helm"),
        idp: bin.join("hawser-test-idp"),
    };
    let go_version = go_version()?;

    let mut inputs = Vec::new();
    let apart = [
        source.join(OTELCOL_SOURCE),
        source.join(HELM_SOURCE),
        source.join(IDP_SOURCE),
    ];
    collect_inputs(&source, &apart, &mut inputs)?;
    Step {
        what: "the test bed",
        duration: "a cold build takes about 7 minutes",
        script: source.join("build.sh"),
        args: vec![bin.clone()],
        stamp: stamp(&source, inputs, &go_version)?,
        stamp_file: cache.join("stamp"),
        outputs: vec![
            &binaries.kube_apiserver,
            &binaries.kubectl,
            &binaries.kubectl_1_32,
            &binaries.etcd,
            &binaries.testkubelet,
            &binaries.reaper,
        ],
    }
    .run(&go_version)?;

    // The collector has a step and a stamp of its own: changing its manifest must not rebuild
    // kube-apiserver, nor a change of the Kubernetes pin the collector.
    let otelcol = source.join(OTELCOL_SOURCE);
    let mut inputs = Vec::new();
    for entry in fs::read_dir(&otelcol).with_context(|| format!("reading {}", otelcol.display()))? {
        inputs.push(entry?.path());
    }
    Step {
        what: "the OpenTelemetry Collector",
        duration: "about 4 minutes with empty Go caches, seconds with warm ones",
        script: otelcol.join("build.sh"),
        args: vec![bin.clone(), cache.join("otelcol")],
        stamp: stamp(&source, inputs, &go_version)?,
        stamp_file: cache.join("stamp-otelcol"),
        outputs: vec![&binaries.otelcol],
    }
    .run(&go_version)?;

    // helm too: its module pins its own Kubernetes libraries, apart from the test bed's.
    let helm = source.join(HELM_SOURCE);
    let inputs = ["build.sh", "go.mod", "go.sum"].map(|f| helm.join(f)).to_vec();
    Step {
        what: "helm",
        duration: "about 2 minutes with empty Go caches",
        script: helm.join("build.sh"),
        args: vec![bin.clone()],
        stamp: stamp(&source, inputs, &go_version)?,
        stamp_file: cache.join("stamp-helm"),
        outputs: vec![&binaries.helm],
    }
    .run(&go_version)?;

    // The OpenID provider: a module of its own (zitadel/oidc), seconds to build.
    let idp = source.join(IDP_SOURCE);
    let inputs = ["build.sh", "go.mod", "go.sum", "main.go"]
        .map(|f| idp.join(f))
        .to_vec();
    Step {
        what: "the test OpenID provider",
        duration: "under a minute with empty Go caches",
        script: idp.join("build.sh"),
        args: vec![bin.clone()],
        stamp: stamp(&source, inputs, &go_version)?,
        stamp_file: cache.join("stamp-idp"),
        outputs: vec![&binaries.idp],
    }
    .run(&go_version)?;
    Ok(binaries)
}

/// Where the test OpenID provider's module lives, under tests/testbed.
const IDP_SOURCE: &str = "idp";

/// Where helm's module and build script live, under tests/testbed.
const HELM_SOURCE: &str = "helm";

/// Where the collector's manifest and build script live, under tests/testbed.
const OTELCOL_SOURCE: &str = "otelcol";

/// One build script, run when its stamp changed or an output is missing.
struct Step<'a> {
    what: &'static str,
    duration: &'static str,
    script: PathBuf,
    args: Vec<PathBuf>,
    stamp: String,
    stamp_file: PathBuf,
    outputs: Vec<&'a PathBuf>,
}

impl Step<'_> {
    fn run(self, go_version: &str) -> Result<()> {
        let built = self.outputs.iter().all(|p| p.is_file());
        if built && fs::read_to_string(&self.stamp_file).ok().as_deref() == Some(self.stamp.as_str()) {
            return Ok(());
        }
        eprintln!("building {} ({go_version}; {})", self.what, self.duration);
        let status = Command::new(&self.script)
            .args(&self.args)
            .status()
            .with_context(|| format!("running {}", self.script.display()))?;
        if !status.success() {
            let args: Vec<String> = self.args.iter().map(|a| a.display().to_string()).collect();
            bail!(
                "building {} failed ({status}); run it by hand to see why: {} {}",
                self.what,
                self.script.display(),
                args.join(" ")
            );
        }
        fs::write(&self.stamp_file, &self.stamp)?;
        Ok(())
    }
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

/// A hash of everything a build reads: `files` (named relative to `source`) and the Go version.
fn stamp(source: &Path, mut files: Vec<PathBuf>, go_version: &str) -> Result<String> {
    files.sort();
    let mut hasher = DefaultHasher::new();
    go_version.hash(&mut hasher);
    for file in &files {
        file.strip_prefix(source).unwrap_or(file).hash(&mut hasher);
        fs::read(file)?.hash(&mut hasher);
    }
    Ok(format!("{:016x}\n", hasher.finish()))
}

/// The test bed's inputs: scripts, module files and Go sources of every module under
/// tests/testbed (the kubectl-1.32 one included), except the folders in `skip` (the collector's
/// and helm's, built apart).
fn collect_inputs(dir: &Path, skip: &[PathBuf], out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if skip.contains(&path) {
            continue;
        }
        if path.is_dir() {
            collect_inputs(&path, skip, out)?;
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
