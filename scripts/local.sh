#!/usr/bin/env bash
# Runs the whole system locally on the embedded defaults: the test bed's
# etcd and kube-apiserver, a hawser relay and agent, and kubectl through the
# tunnel; keeps it up until Enter. Needs Rust and Go (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --quiet --test demo -- --hold
