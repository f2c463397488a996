#!/usr/bin/env bash
# Build the helm CLI from the Go module proxy and cache it, for the chart's unit tests
# (tests/unit/charts/ run `helm lint` and `helm template`).
#
#   .ci/build-helm.sh            # builds the pinned version, prints the binary's path last
#   HELM_VERSION=v3.21.4 .ci/build-helm.sh
#
# The binary lands in ~/.cache/kubetune/helm/<version>/helm ($KUBETUNE_CACHE_DIR overrides the root, as
# for the control plane binaries); a second run is a no-op.
# helm.sh/helm/v3 has no replace directives, so `go install module@version` builds it
# straight from the proxy. The build is niced and single-threaded by default because CI
# machines here have 2 cores shared with other builds (a cold build took 305 s that way; relinking after
# a flag change, 5 s).
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${KUBETUNE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune}"
DEST_DIR="$CACHE_ROOT/helm/$HELM_VERSION"
DEST="$DEST_DIR/helm"
JOBS="${BUILD_JOBS:-1}"

if [[ -x "$DEST" ]]; then
    echo "helm $HELM_VERSION already built: $DEST" >&2
    echo "$DEST"
    exit 0
fi

command -v go >/dev/null || { echo "error: go is not on PATH; install Go >= 1.26 (helm v3.22 needs it) to build helm" >&2; exit 1; }

mkdir -p "$DEST_DIR"
# go install writes to GOBIN; use a private temporary GOBIN and rename into place, so an
# interrupted build never leaves a half-written binary at the cached path.
TMP_BIN="$(mktemp -d "$DEST_DIR/.build.XXXXXX")"
trap 'rm -rf "$TMP_BIN"' EXIT

export GOFLAGS=-mod=mod GOTOOLCHAIN=local GOMAXPROCS="$JOBS" CGO_ENABLED=0
start=$(date +%s)
echo "downloading helm.sh/helm/v3@$HELM_VERSION ..." >&2
gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
# Helm's Makefile stamps the version and the Kubernetes version it was built against (client-go v0.N.x is
# Kubernetes 1.N) into the binary; a plain `go install` leaves "v3.22" and Kubernetes 1.20, and then
# `helm template` rejects every chart with a kubeVersion constraint above 1.20.
k8s_minor="$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2] }' "$gomod")"
[[ -n "$k8s_minor" ]] || { echo "error: no k8s.io/client-go requirement in $gomod" >&2; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done

echo "building helm $HELM_VERSION (Kubernetes 1.$k8s_minor) with $(go version | cut -d' ' -f3)" \
    "(-p $JOBS, GOMAXPROCS=$JOBS) ..." >&2
GOBIN="$TMP_BIN" nice -n 19 go install -p "$JOBS" -trimpath -ldflags="$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv "$TMP_BIN/helm" "$DEST.partial"
mv "$DEST.partial" "$DEST"
echo "built helm $HELM_VERSION in $(( $(date +%s) - start ))s: $("$DEST" version --short)" >&2
echo "$DEST"
