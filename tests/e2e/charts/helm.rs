//! helm (built from its Go module by the test support) against the repo's charts: lint, and
//! template into objects the tests look into; and the files a pod would have, from those objects.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::binaries::binaries;
use crate::support::process::run_with_deadline;

/// How long one helm command may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// The relay chart's folder name under helm/.
pub const RELAY: &str = "hawser-relay";
/// The agent chart's folder name under helm/.
pub const AGENT: &str = "hawser-agent";

/// A release of a chart: what `helm install NAME CHART -n NAMESPACE` names.
pub struct Release<'a> {
    /// The chart's folder name under helm/ ([`RELAY`] or [`AGENT`]).
    pub chart: &'a str,
    /// The release's name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
}

/// helm with homes of its own (no repositories, plugins or caches from the machine).
pub struct Helm {
    bin: PathBuf,
    home: TempDir,
}

impl Helm {
    /// The built helm, with fresh cache, config and data homes.
    pub fn new() -> Result<Self> {
        Ok(Self {
            bin: binaries()?.helm.clone(),
            home: tempfile::Builder::new().prefix("hawser-helm-").tempdir()?,
        })
    }

    /// The folder of chart `name` in the repo.
    pub fn chart(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("helm").join(name)
    }

    /// Runs helm with `args`; the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(&self.bin);
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.path().join(dir));
        }
        cmd.args(args);
        run_with_deadline(cmd, None, DEADLINE).with_context(|| format!("running helm {}", args.join(" ")))
    }

    /// `helm lint --strict` of `chart` with the values files given (the chart's own `ci/` files
    /// are named relative to it) and `--set` pairs.
    pub fn lint(&self, chart: &str, values: &[&str], set: &[&str]) -> Result<Output> {
        let dir = Self::chart(chart);
        let mut args = vec!["lint".to_owned(), "--strict".to_owned(), dir.display().to_string()];
        push_values(&mut args, &dir, values, set);
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `helm template NAME chart -n NAMESPACE` of `release` with those values and `--set` pairs:
    /// the rendered objects.
    pub fn template(&self, release: &Release, values: &[&str], set: &[&str]) -> Result<Rendered> {
        let out = self.template_output(release, values, set)?;
        if !out.status.success() {
            bail!(
                "helm template {} failed: {}",
                release.chart,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Rendered::parse(String::from_utf8(out.stdout)?)
    }

    /// `helm template` as [`Helm::template`], its output whatever the exit status (a refusal
    /// here is one `helm install` makes too; `helm lint` only reports a template's `fail`).
    pub fn template_output(&self, release: &Release, values: &[&str], set: &[&str]) -> Result<Output> {
        let dir = Self::chart(release.chart);
        let mut args: Vec<String> = [
            "template",
            release.name,
            &dir.display().to_string(),
            "--namespace",
            release.namespace,
        ]
        .map(str::to_owned)
        .to_vec();
        push_values(&mut args, &dir, values, set);
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `helm install` of `release` with the values file `values` into the cluster of
    /// `kubeconfig` (no `--wait`: no controller makes pods here); what it installed, as
    /// `helm get manifest` prints it.
    pub fn install(&self, kubeconfig: &Path, release: &Release, values: &str) -> Result<Rendered> {
        let chart = Self::chart(release.chart).display().to_string();
        self.on_cluster(
            kubeconfig,
            release,
            &["install", release.name, &chart, "--values", values],
        )?;
        Rendered::parse(self.on_cluster(kubeconfig, release, &["get", "manifest", release.name])?)
    }

    /// `helm upgrade` of `release` with the values files `values` (later ones win, as helm merges
    /// them); what is installed after it, as `helm get manifest` prints it.
    pub fn upgrade(&self, kubeconfig: &Path, release: &Release, values: &[&str]) -> Result<Rendered> {
        let chart = Self::chart(release.chart).display().to_string();
        let mut args = vec!["upgrade", release.name, &chart];
        for file in values {
            args.extend(["--values", file]);
        }
        self.on_cluster(kubeconfig, release, &args)?;
        Rendered::parse(self.on_cluster(kubeconfig, release, &["get", "manifest", release.name])?)
    }

    /// Runs `helm ARGS --kubeconfig K --namespace NS` for `release`'s namespace; fails unless it
    /// succeeds. Its stdout.
    pub fn on_cluster(&self, kubeconfig: &Path, release: &Release, args: &[&str]) -> Result<String> {
        let kubeconfig = kubeconfig.display().to_string();
        let mut all = args.to_vec();
        all.extend(["--kubeconfig", &kubeconfig, "--namespace", release.namespace]);
        let out = self.run(&all)?;
        if !out.status.success() {
            bail!(
                "helm {} failed: {}",
                all.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Writes `values` (JSON, which is YAML) to a file of this helm's and returns its path.
    pub fn values_file(&self, name: &str, values: &Value) -> Result<String> {
        let path = self.home.path().join(format!("{name}.yaml"));
        fs::write(&path, serde_json::to_string_pretty(values)?)?;
        Ok(path.display().to_string())
    }
}

fn push_values(args: &mut Vec<String>, chart: &Path, values: &[&str], set: &[&str]) {
    for file in values {
        let path = if Path::new(file).is_absolute() {
            PathBuf::from(file)
        } else {
            chart.join(file)
        };
        args.extend(["--values".to_owned(), path.display().to_string()]);
    }
    for pair in set {
        args.extend(["--set".to_owned(), (*pair).to_owned()]);
    }
}

/// The objects `helm template` printed or `helm get manifest` said were installed.
pub struct Rendered {
    /// Every object, as JSON.
    pub objects: Vec<Value>,
}

impl Rendered {
    fn parse(text: String) -> Result<Self> {
        // `text` is every manifest, `---`-separated, as helm prints them.
        let mut objects = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let object = Value::deserialize(doc).context("helm template printed YAML that does not parse")?;
            if !object.is_null() {
                objects.push(object);
            }
        }
        Ok(Self { objects })
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The one object of `kind`; fails if there is none or more than one.
    pub fn one(&self, kind: &str) -> Result<&Value> {
        match self.all(kind)[..] {
            [one] => Ok(one),
            ref many => bail!("the chart rendered {} objects of kind {kind}, not one", many.len()),
        }
    }

    /// The object of `kind` named `name`.
    pub fn named(&self, kind: &str, name: &str) -> Result<&Value> {
        self.all(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .with_context(|| format!("the chart rendered no {kind} {name}"))
    }

    /// Key `key` of the one ConfigMap.
    pub fn config_file(&self, key: &str) -> Result<String> {
        self.one("ConfigMap")?["data"][key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the chart's ConfigMap has no {key}"))
    }

    /// Writes every key of the ConfigMap and of each Secret into `dir`/`folder` (`folder` as the
    /// pod mounts it: `config` for the ConfigMap, the Secret's name otherwise): the files a pod
    /// would have.
    pub fn write_mounts(&self, dir: &Path) -> Result<()> {
        for object in self.all("ConfigMap").into_iter().chain(self.all("Secret")) {
            let folder = dir.join(if object["kind"] == "ConfigMap" {
                "config"
            } else {
                object["metadata"]["name"].as_str().context("a Secret without a name")?
            });
            fs::create_dir_all(&folder)?;
            let data = object["data"]
                .as_object()
                .context("a ConfigMap or Secret without data")?;
            for (key, value) in data {
                let text = value.as_str().context("a data value that is not a string")?;
                let bytes = if object["kind"] == "Secret" {
                    base64::engine::general_purpose::STANDARD.decode(text)?
                } else {
                    text.as_bytes().to_vec()
                };
                fs::write(folder.join(key), bytes)?;
            }
        }
        Ok(())
    }
}
