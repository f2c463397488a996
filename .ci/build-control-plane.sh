#!/usr/bin/env bash
# Build (or reuse from ~/.cache/kubetune/k8s/<versions>/) the test control plane binaries:
# etcd, kube (kube-apiserver + kube-controller-manager + kube-scheduler + kubectl in one multi-call
# binary) and kwok, all from the Go module proxy. Cold: tens of minutes on 2 cores; cached: instant.
#
#   .ci/build-control-plane.sh            # build what is missing
#   .ci/build-control-plane.sh --force    # rebuild
#   KUBETUNE_GO_BUILD_JOBS=1 .ci/build-control-plane.sh   # lower peak memory (go build -p 1)
#
# Needs: go >= 1.26 on PATH, python3 (standard library only), openssl at test time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${root}/testenv/build-binaries.sh" "$@"
