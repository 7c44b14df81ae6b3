#!/usr/bin/env bash
# Benchmarks: medians over several runs, printed on stdout.
#
#   scripts/bench.sh [UP_RUNS=5] [POD_RUNS=20] [TOUR_RUNS=3] [DELETE_RUNS=5] [LEASE_RENEWALS=3] [AUDIT_RUNS=3]
#
# 1. `sa-lab up` to ready, and each component's resident memory;
# 2. Pod create to Succeeded for a trivial lab Pod (median and p95), a
#    graceful delete to the Pod gone (the program exits on SIGTERM), and the
#    interval between the node's Lease renewals;
#    1 and 2 with the sandbox node, then (as root) with the kubelet node;
# 3. `sa-lab tour` wall time (bring-up, every chapter, tear-down);
# 4. `sa-lab audit` on a generated cluster of 200 namespaces, 2,000
#    ServiceAccounts and 4,000 RoleBindings: median wall time and peak memory.
# The e2e tests assert behaviour only; every timing lives here.
# Everything runs the same debug build the README's commands use.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"

median() {
  sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'
}

main() {
  local up_runs="${1:-5}" pod_runs="${2:-20}" tour_runs="${3:-3}"
  local delete_runs="${4:-5}" lease_renewals="${5:-3}" audit_runs="${6:-3}"
  cd "${REPO_ROOT}"
  SA_LAB_K8S_BIN="$(scripts/install-k8s.sh)"
  export SA_LAB_K8S_BIN SA_LAB_QUIET=1
  if kubelet_node_possible; then
    SA_LAB_NODE_BIN="$(scripts/install-node-bins.sh)"
    export SA_LAB_NODE_BIN
  fi
  SA_LAB_HOME="$(mktemp -d "${TMPDIR:-/tmp}/sa-lab-bench.XXXXXX")"
  export SA_LAB_HOME
  trap 'rm -rf "${SA_LAB_HOME}"' EXIT
  cargo build --workspace --bins --locked --quiet

  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
  cargo bench --profile dev --locked --quiet -p sa-lab-e2e --bench startup -- \
    "${up_runs}" "${pod_runs}" "${delete_runs}" "${lease_renewals}"

  local times=() i start end
  for ((i = 0; i < tour_runs; i++)); do
    start="$(date +%s.%N)"
    target/debug/sa-lab tour >/dev/null 2>&1
    end="$(date +%s.%N)"
    times+=("$(awk -v a="${start}" -v b="${end}" 'BEGIN { printf "%.2f", b - a }')")
  done
  printf 'sa-lab tour wall time, %d runs: median %s s (runs: %s)\n' \
    "${tour_runs}" "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"

  cargo bench --profile dev --locked --quiet -p sa-lab-e2e --bench audit -- 200 "${audit_runs}"
}

main "$@"
