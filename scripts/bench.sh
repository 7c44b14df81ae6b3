#!/usr/bin/env bash
# Benchmarks: medians over several runs, printed on stdout.
#
#   scripts/bench.sh [UP_RUNS=5] [POD_RUNS=20] [TOUR_RUNS=3] [DELETE_RUNS=5] [LEASE_RENEWALS=3] [AUDIT_RUNS=3] [CHECK_RUNS=10]
#
# 1. `sa-lab up` to ready, and each component's resident memory;
# 2. Pod create to Succeeded for a trivial lab Pod (median and p95), a
#    graceful delete to the Pod gone (the program exits on SIGTERM), and the
#    interval between the node's Lease renewals;
#    1 and 2 with the sandbox node, then (as root) with the kubelet node;
# 3. `sa-lab tour` wall time (bring-up, every chapter, tear-down);
# 4. `sa-lab audit` on a generated cluster of 200 namespaces, 2,000
#    ServiceAccounts and 4,000 RoleBindings: median wall time and peak memory;
# 5. `sa-lab check` of a passing exercise (03-pods-only, its solution) on a
#    running local cluster: a learner's feedback loop, every run counted
#    (the first one also makes the exercise's namespace).
# The e2e tests assert behaviour only; every timing lives here.
# Everything runs the same debug build the README's commands use.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"

# Stops every cluster a run left in the bench's state dir, then removes it.
cleanup() {
  local dir
  for dir in "${SA_LAB_HOME}"/clusters/*/; do
    [[ -d "${dir}" ]] || continue
    target/debug/sa-lab down --name "$(basename "${dir}")" >/dev/null 2>&1 || true
  done
  rm -rf "${SA_LAB_HOME}"
}

# The wall time of "$@" in seconds (2 decimals); fails, saying so, if the
# command does.
elapsed() {
  local start end
  start="$(date +%s.%N)"
  if ! "$@" >/dev/null 2>&1; then
    echo "bench: failed: $*" >&2
    return 1
  fi
  end="$(date +%s.%N)"
  awk -v a="${start}" -v b="${end}" 'BEGIN { printf "%.2f", b - a }'
}

bench_check() {
  local runs="$1" name="bench-check-$$" ws="${SA_LAB_HOME}/exercises" times=() i t
  target/debug/sa-lab up --name "${name}" >/dev/null 2>&1
  target/debug/sa-lab exercises init "${ws}" >/dev/null 2>&1
  target/debug/sa-lab solution 03-pods-only --reveal --write --dir "${ws}" >/dev/null 2>&1
  for ((i = 0; i < runs; i++)); do
    t="$(SA_LAB_CLUSTER="${name}" elapsed target/debug/sa-lab check 03-pods-only --dir "${ws}")"
    times+=("${t}")
  done
  target/debug/sa-lab down --name "${name}" >/dev/null 2>&1
  printf 'sa-lab check 03-pods-only (passing) on a running local cluster, %d runs: median %s s (runs: %s)\n' \
    "${runs}" "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"
}

median() {
  sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'
}

main() {
  local up_runs="${1:-5}" pod_runs="${2:-20}" tour_runs="${3:-3}"
  local delete_runs="${4:-5}" lease_renewals="${5:-3}" audit_runs="${6:-3}" check_runs="${7:-10}"
  cd "${REPO_ROOT}"
  SA_LAB_K8S_BIN="$(scripts/install-k8s.sh)"
  export SA_LAB_K8S_BIN SA_LAB_QUIET=1
  if kubelet_node_possible; then
    SA_LAB_NODE_BIN="$(scripts/install-node-bins.sh)"
    export SA_LAB_NODE_BIN
  fi
  SA_LAB_HOME="$(mktemp -d "${TMPDIR:-/tmp}/sa-lab-bench.XXXXXX")"
  export SA_LAB_HOME
  trap cleanup EXIT
  cargo build --workspace --bins --locked --quiet

  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
  cargo bench --profile dev --locked --quiet -p sa-lab-e2e --bench startup -- \
    "${up_runs}" "${pod_runs}" "${delete_runs}" "${lease_renewals}"

  local times=() i t
  for ((i = 0; i < tour_runs; i++)); do
    t="$(elapsed target/debug/sa-lab tour)"
    times+=("${t}")
  done
  printf 'sa-lab tour wall time, %d runs: median %s s (runs: %s)\n' \
    "${tour_runs}" "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"

  cargo bench --profile dev --locked --quiet -p sa-lab-e2e --bench audit -- 200 "${audit_runs}"
  bench_check "${check_runs}"
}

main "$@"
