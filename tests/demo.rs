//! The local system, end to end, on the embedded defaults: a real
//! kube-apiserver (the test bed), a relay and an agent from this crate's
//! `hawser` binary, and kubectl through the tunnel, with kubectl's output
//! shown. `scripts/local.sh` runs it with `--hold`, which keeps everything
//! up until Enter is pressed; `cargo test` runs it once as a smoke test.
#![forbid(unsafe_code)]

#[path = "e2e"]
mod e2e {
    // The demo uses a part of the end-to-end support.
    #[allow(dead_code)]
    pub mod support;
}

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Result, ensure};
use e2e::support::hawser::Hawser;
use e2e::support::{PodSpec, Testbed};

fn main() -> ExitCode {
    let hold = std::env::args().any(|a| a == "--hold");
    match demo(hold) {
        Ok(()) => {
            println!("demo: 1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo: {e:#}");
            println!("demo: 0 passed, 1 failed");
            ExitCode::FAILURE
        }
    }
}

fn demo(hold: bool) -> Result<()> {
    println!("starting etcd, kube-apiserver and the test kubelet ...");
    let tb = Testbed::start()?;
    println!("starting a relay and an agent (hawser relay / hawser agent) ...");
    let hawser = Hawser::start(&tb)?;
    let kubectl = hawser.kubeconfig_route("hawser-admin", &[])?;
    let ns = tb.namespace("demo")?;
    let ns = ns.as_str();
    tb.running_pod(ns, "hello", &PodSpec::default())?;
    tb.append_log(ns, "hello", "main", "hello from the test kubelet\n")?;

    println!(
        "\nrelay: {}   kubeconfig: {}\n",
        hawser.relay_url,
        kubectl.kubeconfig().display()
    );
    for args in [
        &["version"][..],
        &["auth", "whoami"],
        &["get", "namespaces"],
        &["get", "pods", "-n", ns, "-o", "wide"],
        &["logs", "-n", ns, "hello"],
        &[
            "exec",
            "-n",
            ns,
            "hello",
            "--",
            "sh",
            "-c",
            "echo exec through the tunnel: $(uname -sm)",
        ],
    ] {
        println!("$ kubectl {}", args.join(" "));
        let out = kubectl.run(args)?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success(), "kubectl {} failed", args.join(" "));
        println!();
    }

    if hold {
        println!("Everything is up. In another shell:");
        println!("  export KUBECONFIG={}", kubectl.kubeconfig().display());
        println!("  kubectl get pods -A");
        println!("Press Enter to stop.");
        let _ = std::io::stdin().lock().lines().next();
    }
    Ok(())
}
