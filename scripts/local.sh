#!/usr/bin/env bash
# Runs the whole system locally on the embedded defaults: the test bed's
# etcd and kube-apiserver, a hawser relay and agent, and kubectl through the
# tunnel; keeps it up until Enter. Needs Rust and Go (see README), and protoc
# to build (installed here from Debian's protobuf-compiler when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v protoc >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    echo "local.sh: protoc is missing (the etcd client compiles etcd's .proto files at build time); installing protobuf-compiler"
    { $sudo apt-get install -y protobuf-compiler || { $sudo apt-get update && $sudo apt-get install -y protobuf-compiler; }; } >/dev/null || {
        echo "local.sh: could not install protoc: run apt-get install protobuf-compiler (as root), then this script again" >&2
        exit 1
    }
fi

exec cargo test --quiet --test demo -- --hold
