#!/usr/bin/env bash
# The quickstart: a LoRA fine-tune of SmolLM2-135M-Instruct on this machine's CPU, run by kubetune on a
# local Kubernetes cluster, then the model's answer to a held-out question before and after training.
#
#   sudo ./quickstart.sh                    # the shipped data: pairs about kubetune's own API
#   sudo ./quickstart.sh lamini_docs.jsonl  # your question/answer JSON Lines
#
# Debian 12 and root (the local cluster's node runs containers). The first run installs and builds what
# is missing (.ci/install.sh: Debian packages, .venv, the control plane, helm and kubetune's images; tens
# of minutes); later runs reuse it all. `.venv/bin/kubetune local down` stops the cluster afterwards.
set -euo pipefail

if (( EUID != 0 )); then
  echo "error: run as root: the local cluster's node runs containers (cgroups, mounts, iptables)" >&2
  exit 1
fi
data="${1:-}"
if [[ -n "$data" ]]; then
  [[ -f "$data" ]] || { echo "error: $data is not a file" >&2; exit 1; }
  data="$(realpath "$data")"  # before the cd below
fi
cd "$(dirname "$0")"
kubetune=.venv/bin/kubetune
namespace=kubetune-quickstart
# The tests run the same script with a shorter job of the same name.
manifest="${KUBETUNE_QUICKSTART_MANIFEST:-examples/quickstart.yaml}"

.ci/install.sh

printf '\n==> A local cluster with kubetune (%s)\n' "$(date +%H:%M:%S)"
"$kubetune" local up --data "$data"
KUBECONFIG="$("$kubetune" local kubeconfig)"
export KUBECONFIG

printf '\n==> The FineTuneJob (%s)\n' "$(date +%H:%M:%S)"
if "$kubetune" status quickstart -n "$namespace" >/dev/null 2>&1; then
  echo "FineTuneJob quickstart exists already: following it ('kubetune cancel quickstart -n $namespace' starts over)"
else
  "$kubetune" submit -f "$manifest" -n "$namespace"
fi
if ! "$kubetune" status quickstart -n "$namespace" -w; then
  echo "error: the FineTuneJob did not succeed; its trainer log: $kubetune logs quickstart -n $namespace" >&2
  exit 1
fi

printf '\n==> The result (%s)\n' "$(date +%H:%M:%S)"
"$kubetune" local results quickstart
cat <<EOT

The adapter stays on the local cluster's outputs volume until '$kubetune local down', which stops the
cluster and removes its files: copy the adapter directory above first to keep it.
  export KUBECONFIG=$KUBECONFIG
  $kubetune list -n $namespace
EOT
