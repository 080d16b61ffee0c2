//! Command-line interface of the `hawser` binary.

use clap::Parser;

/// Reach a Kubernetes API server from anywhere, without an inbound port.
///
/// An agent in each cluster dials out to a relay; people and CI jobs run
/// plain kubectl through the relay, and the agent forwards to kube-apiserver
/// with Kubernetes user impersonation, so RBAC decides.
#[derive(Debug, Parser)]
#[command(name = "hawser", version, about, long_about, arg_required_else_help = true)]
pub struct Cli {}
