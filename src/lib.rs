//! Hawser: kubectl access to a Kubernetes API server from anywhere.
//!
//! An agent inside the cluster dials out to a relay; callers reach the cluster
//! with plain kubectl through the relay, and the agent forwards to
//! kube-apiserver with user impersonation so Kubernetes RBAC decides.
//! This library holds every part; the `hawser` binary is a thin entry point.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod audit;
pub mod auth;
pub mod body;
pub mod cid;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod doctor;
pub mod duration;
pub mod forward;
pub mod headers;
pub mod idle;
pub mod impersonation;
pub mod login;
pub mod onboard;
pub mod overview;
pub mod proto;
pub mod relay;
pub mod reload;
pub mod request_info;
pub mod shutdown;
pub mod status;
pub mod step;
pub mod telemetry;
pub mod tls;
pub mod token_file;
pub mod transport;
pub mod tunnel;
pub mod wire;
