//! A real control plane on loopback: etcd, kube-apiserver (RBAC, service
//! account tokens, one static token of a `system:monitoring` user, every
//! request traced into an OpenTelemetry Collector) and the test kubelet, each
//! on free ports in a fresh temp dir, plus helpers for what tests set up as
//! the administrator.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::sync_channel;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tempfile::TempDir;

use super::binaries::{Binaries, binaries};
use super::certs::Pki;
use super::etcd;
use super::kubectl::Kubectl;
use super::net::{free_port, retry_if_port_taken};
use super::otelcol::Collector;
use super::process::{Supervised, wait_for};

/// Name of the Node the test kubelet registers.
pub const NODE: &str = "testbed-node";
/// How long the control plane may take to become ready.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// The user of the test bed's static token ([`Testbed::monitoring_token`]), in the group
/// `system:monitoring` alone: kube-apiserver continues the trace of a request this user
/// authenticates (k8s.io/apiserver's `endpoints/filters/traces.go`), however it impersonates.
pub const MONITORING_USER: &str = "hawser-agent-traced";

/// A running control plane. Dropping it stops every process it started.
pub struct Testbed {
    // Field order is drop order: kubelet, then apiserver, then etcd, the collector, the dir.
    _kubelet: Supervised,
    _apiserver: Supervised,
    _etcd: Supervised,
    collector: Collector,
    dir: TempDir,
    bins: &'static Binaries,
    /// The apiserver's URL, `https://127.0.0.1:PORT`.
    pub server: String,
    /// Certificates and keys of this control plane.
    pub pki: Pki,
    /// Kubeconfig of the administrator (client certificate, system:masters).
    pub admin_kubeconfig: PathBuf,
    kubelet_root: PathBuf,
    monitoring_token: String,
}

/// What a test pod runs.
#[derive(Debug, Default, Clone)]
pub struct PodSpec {
    /// The main container's command, started as a local process; none runs if empty.
    pub command: Vec<String>,
    /// Whether the main container keeps stdin open (for attach).
    pub stdin: bool,
}

impl Testbed {
    /// Builds the binaries if needed and starts etcd, kube-apiserver and the test kubelet.
    pub fn start() -> Result<Self> {
        // Ports are picked free, then bound by etcd and kube-apiserver a moment later.
        retry_if_port_taken("test bed", Self::start_once)
    }

    fn start_once() -> Result<Self> {
        let bins = binaries()?;
        let dir = tempfile::Builder::new().prefix("hawser-testbed-").tempdir()?;
        let pki = Pki::generate(&dir.path().join("pki"))?;

        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = etcd::spawn(
            "testbed",
            &dir.path().join("etcd"),
            etcd_port,
            peer_port,
            &dir.path().join("etcd.log"),
        )?;

        // kube-apiserver exports a span for every request (and its inner steps) to the collector.
        let collector = Collector::start()?;
        let tracing_config = dir.path().join("tracing.yaml");
        fs::write(
            &tracing_config,
            format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: TracingConfiguration\n\
                 endpoint: {}\nsamplingRatePerMillion: 1000000\n",
                collector.otlp_grpc_endpoint()
            ),
        )?;

        // A static token (`--token-auth-file`, CSV: token, user, uid, groups) for a user in
        // `system:monitoring`: no service account can be in that group. Written here, not under
        // tests/testbed, so it is no input of the binaries' build stamp.
        let monitoring_token = format!(
            "monitoring-{}",
            data_encoding::HEXLOWER.encode(&rand::random::<[u8; 16]>())
        );
        let token_file = dir.path().join("tokens.csv");
        fs::write(
            &token_file,
            format!("{monitoring_token},{MONITORING_USER},{MONITORING_USER},system:monitoring\n"),
        )?;

        let p = |path: &Path| path.display().to_string();
        let mut apiserver = Supervised::spawn_with_env(
            &bins.reaper,
            "kube-apiserver",
            &bins.kube_apiserver,
            &strings(&[
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                &format!("--tls-cert-file={}", p(&pki.serving_cert)),
                &format!("--tls-private-key-file={}", p(&pki.serving_key)),
                &format!("--client-ca-file={}", p(&pki.ca_cert)),
                &format!("--token-auth-file={}", p(&token_file)),
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", p(&pki.service_account_pub)),
                &format!("--service-account-signing-key-file={}", p(&pki.service_account_key)),
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--profiling=false",
                &format!("--tracing-config-file={}", p(&tracing_config)),
                "--v=1",
            ]),
            &dir.path().join("kube-apiserver.log"),
            // The SDK's batch exporter sends every 5 s by default: tests would wait that long.
            &[("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned())],
        )?;

        let server = format!("https://127.0.0.1:{api_port}");
        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &server,
            &pki.ca_cert,
            json!({"client-certificate": pki.admin_cert, "client-key": pki.admin_key}),
        )?;
        let kubelet_root = dir.path().join("kubelet");
        fs::create_dir_all(&kubelet_root)?;

        let admin = Kubectl::new(&bins.kubectl, &admin_kubeconfig);
        wait_ready(&admin, &mut etcd, &mut apiserver)?;
        let kubelet = start_kubelet(
            bins,
            &admin_kubeconfig,
            &kubelet_root,
            &dir.path().join("testkubelet.log"),
        )?;
        Ok(Self {
            _kubelet: kubelet,
            _apiserver: apiserver,
            _etcd: etcd,
            collector,
            dir,
            bins,
            server,
            pki,
            admin_kubeconfig,
            kubelet_root,
            monitoring_token,
        })
    }

    /// kubectl as the administrator, straight to the apiserver.
    pub fn admin(&self) -> Kubectl {
        Kubectl::new(&self.bins.kubectl, &self.admin_kubeconfig)
    }

    /// The collector that receives kube-apiserver's spans (their service.name is `apiserver`).
    pub fn collector(&self) -> &Collector {
        &self.collector
    }

    /// The static token of [`MONITORING_USER`], who has the rights of `system:monitoring` and
    /// `system:authenticated` until a test binds more.
    pub fn monitoring_token(&self) -> &str {
        &self.monitoring_token
    }

    /// The test bed's kubectl binary.
    pub fn kubectl_bin(&self) -> &Path {
        &self.bins.kubectl
    }

    /// Writes a kubeconfig for the apiserver that authenticates with `token`.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        write_kubeconfig(&path, &self.server, &self.pki.ca_cert, json!({ "token": token }))?;
        Ok(path)
    }

    /// A fresh namespace with a `default` service account (no controller-manager makes one).
    pub fn namespace(&self, prefix: &str) -> Result<String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = self.admin();
        admin.ok(&["create", "namespace", &name])?;
        admin.ok(&["create", "serviceaccount", "default", "-n", &name])?;
        Ok(name)
    }

    /// Creates a pod on the test node and waits until the kubelet reports it Running.
    pub fn running_pod(&self, namespace: &str, name: &str, spec: &PodSpec) -> Result<()> {
        let mut container = json!({"name": "main", "image": "hawser.test/none", "stdin": spec.stdin});
        if !spec.command.is_empty() {
            container["command"] = json!(spec.command);
        }
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": NODE, "containers": [container], "terminationGracePeriodSeconds": 1},
        });
        let admin = self.admin();
        admin.ok_with_stdin(&["create", "-f", "-"], pod.to_string().as_bytes())?;
        admin.ok(&[
            "wait",
            "-n",
            namespace,
            "--for=jsonpath={.status.phase}=Running",
            &format!("pod/{name}"),
            "--timeout=60s",
        ])?;
        Ok(())
    }

    /// The log file of a pod's container, which `kubectl logs` serves.
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.kubelet_root
            .join("logs")
            .join(namespace)
            .join(pod)
            .join(format!("{container}.log"))
    }

    /// Creates or updates ConfigMap `name` so its `data.v` is `value` (what
    /// `Kubectl::watch_values` prints).
    pub fn set_value(&self, namespace: &str, name: &str, value: &str) -> Result<()> {
        let config_map = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"v": value},
        });
        self.admin()
            .ok_with_stdin(&["apply", "-f", "-"], config_map.to_string().as_bytes())?;
        Ok(())
    }

    /// What the test kubelet has logged so far.
    pub fn kubelet_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("testkubelet.log")).unwrap_or_default()
    }

    /// Appends `text` to a container's log.
    pub fn append_log(&self, namespace: &str, pod: &str, container: &str, text: &str) -> Result<()> {
        let path = self.log_path(namespace, pod, container);
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Creates a service account and returns a token for it (TokenRequest API).
    pub fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let admin = self.admin();
        admin.create_or_exists(&["create", "serviceaccount", name, "-n", namespace])?;
        let token = admin.ok(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
        Ok(token.trim().to_owned())
    }

    /// Binds `cluster_role` to `user` in `namespace` and waits until RBAC enforces it.
    pub fn bind_role(&self, namespace: &str, cluster_role: &str, user: &str) -> Result<()> {
        self.bind(
            namespace,
            cluster_role,
            &format!("--user={user}"),
            &[&format!("--as={user}")],
        )
    }

    /// Binds `cluster_role` to `group` in `namespace` and waits until RBAC enforces it.
    pub fn bind_group_role(&self, namespace: &str, cluster_role: &str, group: &str) -> Result<()> {
        let probe = [format!("--as=probe-of-{group}"), format!("--as-group={group}")];
        self.bind(
            namespace,
            cluster_role,
            &format!("--group={group}"),
            &[&probe[0], &probe[1]],
        )
    }

    fn bind(&self, namespace: &str, cluster_role: &str, subject: &str, as_subject: &[&str]) -> Result<()> {
        let admin = self.admin();
        let binding = format!(
            "{cluster_role}-{}",
            subject.trim_start_matches("--").replace([':', '=', '/'], "-")
        );
        let role = format!("--clusterrole={cluster_role}");
        admin.ok(&["create", "rolebinding", &binding, &role, subject, "-n", namespace])?;
        let mut can_i = vec!["auth", "can-i", "list", "pods", "-n", namespace];
        can_i.extend_from_slice(as_subject);
        wait_for(
            &format!("{subject} to be allowed in {namespace}"),
            Duration::from_secs(30),
            || {
                let out = admin.run(&can_i)?;
                let answer = String::from_utf8_lossy(&out.stdout);
                if answer.trim() == "yes" {
                    return Ok(Some(()));
                }
                bail!("kubectl {can_i:?}: {answer} {}", String::from_utf8_lossy(&out.stderr))
            },
        )
    }
}

fn wait_ready(admin: &Kubectl, etcd: &mut Supervised, apiserver: &mut Supervised) -> Result<()> {
    let tail = |etcd: &Supervised, apiserver: &Supervised| {
        format!(
            "etcd log ends:\n{}\nkube-apiserver log ends:\n{}",
            etcd.log_tail(10),
            apiserver.log_tail(30)
        )
    };
    let ready = wait_for("kube-apiserver /readyz", START_DEADLINE, || {
        // A process that exited will not become ready: stop waiting at once.
        if let Err(e) = etcd.ensure_running().and_then(|()| apiserver.ensure_running()) {
            return Ok(Some(Err(e)));
        }
        let out = admin.run(&["get", "--raw=/readyz"])?;
        Ok(out.status.success().then_some(Ok(())))
    });
    ready
        .and_then(|exited| exited)
        .map_err(|e| e.context(tail(etcd, apiserver)))
}

fn start_kubelet(bins: &Binaries, kubeconfig: &Path, root: &Path, log: &Path) -> Result<Supervised> {
    let mut kubelet = Supervised::spawn(
        &bins.reaper,
        "testkubelet",
        &bins.testkubelet,
        &strings(&[
            &format!("--kubeconfig={}", kubeconfig.display()),
            &format!("--root={}", root.display()),
            &format!("--node-name={NODE}"),
        ]),
        log,
        true,
    )?;
    // It prints "ready PORT" once its Node is registered.
    let stdout = kubelet.take_stdout().expect("stdout is piped");
    let (tx, rx) = sync_channel(1);
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(START_DEADLINE) {
        Ok(line) if line.starts_with("ready ") => Ok(kubelet),
        _ => bail!(
            "testkubelet did not become ready; its log ends:\n{}",
            kubelet.log_tail(30)
        ),
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: serde_json::Value) -> Result<()> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "user"}}],
        "current-context": "testbed",
    });
    fs::write(path, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}
