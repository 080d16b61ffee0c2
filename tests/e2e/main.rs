//! End-to-end tests against a real kube-apiserver, etcd and kubectl.
//!
//! One control plane per run of this binary, started on first use and
//! stopped when the run ends (also when a test panics). Each test works in
//! namespaces of its own. Run one test with `cargo test --test e2e -- NAME`.
#![forbid(unsafe_code)]

mod balancer;
mod baseline;
mod charts;
mod clusters;
mod dashboard;
mod doctor;
mod federation;
mod fleet;
mod h2flood;
mod login;
mod observability;
mod onboard;
mod passthrough;
mod reload;
mod routes;
mod security;
mod stall;
mod support;
mod telemetry;
mod transports;
mod trust;
mod tunnel;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use libtest_mimic::{Arguments, Trial};

use routes::{Deployment, Direct, GET_RAW_NEEDS_SERVER_PATH, Route, Tunnel, ViaKubeconfig, ViaProxy, WithKubectl132};
use support::Testbed;

/// The shared control plane, started by whichever test needs it first.
#[derive(Default)]
struct Fixture {
    testbed: Mutex<Option<Result<Arc<Testbed>, String>>>,
}

impl Fixture {
    fn get(&self) -> Result<Arc<Testbed>, String> {
        let mut slot = self.testbed.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| {
            Testbed::start()
                .map(Arc::new)
                .map_err(|e| format!("starting the test bed: {e:#}"))
        })
        .clone()
    }

    /// Stops the control plane once every test is done.
    fn shutdown(&self) {
        let taken = self.testbed.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(taken);
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let fixture = Arc::new(Fixture::default());
    let deployment = Arc::new(Deployment::default());
    let over_tcp = Arc::new(Deployment::over(Tunnel::Tcp));
    let via_proxy = Arc::new(Deployment::over(Tunnel::TcpViaProxy));
    let direct: Arc<dyn Route> = Arc::new(Direct);
    let kubeconfig: Arc<dyn Route> = Arc::new(ViaKubeconfig(deployment.clone(), "kubeconfig"));
    let proxy: Arc<dyn Route> = Arc::new(ViaProxy::new(deployment.clone()));
    let tcp: Arc<dyn Route> = Arc::new(ViaKubeconfig(over_tcp.clone(), "tcp"));
    let tcp_via_proxy: Arc<dyn Route> = Arc::new(ViaKubeconfig(via_proxy.clone(), "tcp-via-proxy"));
    let routes: Vec<Arc<dyn Route>> = vec![
        direct.clone(),
        kubeconfig.clone(),
        proxy.clone(),
        tcp.clone(),
        tcp_via_proxy.clone(),
        // The same routes with an older kubectl (issue #11), on the same deployments.
        Arc::new(WithKubectl132::new(direct, "direct-kubectl-1.32", &[])),
        Arc::new(WithKubectl132::new(proxy, "proxy-kubectl-1.32", &[])),
        Arc::new(WithKubectl132::new(
            kubeconfig,
            "kubeconfig-kubectl-1.32",
            GET_RAW_NEEDS_SERVER_PATH,
        )),
        Arc::new(WithKubectl132::new(tcp, "tcp-kubectl-1.32", GET_RAW_NEEDS_SERVER_PATH)),
        Arc::new(WithKubectl132::new(
            tcp_via_proxy,
            "tcp-via-proxy-kubectl-1.32",
            GET_RAW_NEEDS_SERVER_PATH,
        )),
    ];

    let mut trials = Vec::new();
    for route in &routes {
        for &(name, test) in baseline::TESTS {
            if route.excluded().contains(&name) {
                continue;
            }
            let (fixture, route) = (fixture.clone(), route.clone());
            trials.push(Trial::test(format!("{}::{name}", route.name()), move || {
                let testbed = fixture.get()?;
                test(&testbed, route.as_ref()).map_err(|e| format!("{e:#}").into())
            }));
        }
    }

    for &(name, test) in tunnel::TESTS {
        let (fixture, deployment) = (fixture.clone(), deployment.clone());
        trials.push(Trial::test(format!("tunnel::{name}"), move || {
            let testbed = fixture.get()?;
            test(&testbed, &deployment).map_err(|e| format!("{e:#}").into())
        }));
    }

    for &(name, test) in transports::TESTS {
        let (fixture, deployment) = (fixture.clone(), deployment.clone());
        trials.push(Trial::test(format!("transport::{name}"), move || {
            let testbed = fixture.get()?;
            test(&testbed, &deployment).map_err(|e| format!("{e:#}").into())
        }));
    }

    for &(name, test) in security::TESTS {
        let (fixture, deployment) = (fixture.clone(), deployment.clone());
        trials.push(Trial::test(format!("security::{name}"), move || {
            let testbed = fixture.get()?;
            test(&testbed, &deployment).map_err(|e| format!("{e:#}").into())
        }));
    }

    for &(name, test) in reload::TESTS {
        let (fixture, deployment) = (fixture.clone(), deployment.clone());
        trials.push(Trial::test(format!("reload::{name}"), move || {
            let testbed = fixture.get()?;
            test(&testbed, &deployment).map_err(|e| format!("{e:#}").into())
        }));
    }

    for &(name, test) in trust::TESTS {
        let (fixture, deployment) = (fixture.clone(), deployment.clone());
        trials.push(Trial::test(format!("trust::{name}"), move || {
            let testbed = fixture.get()?;
            test(&testbed, &deployment).map_err(|e| format!("{e:#}").into())
        }));
    }

    for (suite, tests) in [
        ("balancer", balancer::TESTS),
        ("fleet", fleet::TESTS),
        ("clusters", clusters::TESTS),
        ("telemetry", telemetry::TESTS),
        ("observability", observability::TESTS),
        ("doctor", doctor::TESTS),
        ("onboard", onboard::TESTS),
        ("dashboard", dashboard::TESTS),
        ("charts", charts::TESTS),
        ("federation", federation::TESTS),
        ("login", login::TESTS),
    ] {
        for &(name, test) in tests {
            let fixture = fixture.clone();
            trials.push(Trial::test(format!("{suite}::{name}"), move || {
                let testbed = fixture.get()?;
                test(&testbed).map_err(|e| format!("{e:#}").into())
            }));
        }
    }
    for (suite, tests) in [
        ("balancer", balancer::STANDALONE),
        ("observability", observability::STANDALONE),
        ("charts", charts::STANDALONE),
    ] {
        for &(name, test) in tests {
            trials.push(Trial::test(format!("{suite}::{name}"), move || {
                test().map_err(|e| format!("{e:#}").into())
            }));
        }
    }

    let conclusion = libtest_mimic::run(&args, trials);
    drop(routes);
    deployment.shutdown();
    over_tcp.shutdown();
    via_proxy.shutdown();
    fixture.shutdown();
    if conclusion.has_failed() {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    }
}
