//! Test bed support for end-to-end tests: builds the real Kubernetes binaries
//! once, runs etcd, kube-apiserver and a test kubelet on free loopback ports,
//! and offers helpers to set up namespaces, pods, service accounts and RBAC;
//! also a standalone etcd and a load balancer (nginx) for relays, and the
//! observability parts: an OpenTelemetry Collector and Prometheus.
//! Every process it starts runs under `reaper`, so none outlives the test run,
//! even when the run panics or is killed.

pub mod binaries;
pub mod certs;
pub mod cluster;
pub mod etcd;
pub mod fleet;
pub mod hawser;
pub mod https;
pub mod idp;
pub mod kubectl;
pub mod net;
pub mod nginx;
pub mod otelcol;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod rogue;

pub use cluster::{PodSpec, Testbed};
pub use kubectl::Kubectl;
