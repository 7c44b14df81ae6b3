#!/usr/bin/env bash
# Benchmarks: medians over several runs, printed on stdout.
#
#   scripts/bench.sh [UP_RUNS=5] [POD_RUNS=20] [TOUR_RUNS=3] [DELETE_RUNS=5] [LEASE_RENEWALS=3]
#                    [AUDIT_RUNS=3] [CHECK_RUNS=10] [KIND_RUNS=3] [COLD_RUNS=0]
#
# 1. `sa-lab up` to ready beside its floor (etcd + kube-apiserver alone to
#    `/readyz`, interleaved), their ratio and the goals, where `up`'s time
#    goes by phase, and each component's resident memory;
# 2. Pod create to Succeeded for a trivial lab Pod (median and p95), a
#    graceful delete to the Pod gone (the program exits on SIGTERM), and the
#    interval between the node's Lease renewals;
#    1 and 2 with the sandbox node, then (as root) with the kubelet node,
#    whose Pod start is also measured with each way its kubelet learns of
#    a container's exit (SA_LAB_KUBELET_PLEG: evented, generic);
# 3. `sa-lab tour` wall time (bring-up, every chapter, tear-down), with and
#    without the API server's audit log, interleaved;
# 4. `sa-lab audit` on a generated cluster of 200 namespaces, 2,000
#    ServiceAccounts and 4,000 RoleBindings: median wall time and peak memory;
# 5. `sa-lab check` of a passing exercise (03-pods-only, its solution) on a
#    running local cluster: a learner's feedback loop, every run counted
#    (the first one also makes the exercise's namespace).
# 6. on kind, when it can run here (rootful podman for the locally built node
#    image, or Docker): `scripts/kind-up.sh` create -> ready with the node
#    image cached (KIND_RUNS runs), then Pod create to Succeeded on that
#    cluster (POD_RUNS runs). Where kind cannot run, it says why and skips.
#    SA_LAB_KIND_NODE_IMAGE picks the node image as for kind-up (auto).
# 7. with COLD_RUNS > 0: the README's main command (scripts/tour.sh) from a
#    fresh clone of this commit with every cache empty, about 8 min a run
#    on 2 cores (the caches are temporary ones: yours are not touched).
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
# command does. Its stdout goes to file $REPORT if set.
elapsed() {
  local start end
  start="$(date +%s.%N)"
  if ! "$@" >"${REPORT:-/dev/null}" 2>/dev/null; then
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

# bench_cold RUNS: scripts/tour.sh from a fresh clone of HEAD, its Go
# modules, Go build cache, cargo registry and sa-lab cache all new and
# empty (temporary, removed afterwards), as on a fresh machine.
bench_cold() {
  local runs="$1" i dir start times=()
  ((runs > 0)) || return 0
  for ((i = 0; i < runs; i++)); do
    dir="$(mktemp -d "${TMPDIR:-/tmp}/sa-lab-cold.XXXXXX")"
    git clone --quiet "${REPO_ROOT}" "${dir}/repo"
    start="$(date +%s.%N)"
    if ! (cd "${dir}/repo" && env -u SA_LAB_K8S_BIN -u SA_LAB_NODE_BIN GOMODCACHE="${dir}/gomod" \
      GOCACHE="${dir}/gocache" CARGO_HOME="${dir}/cargo" SA_LAB_CACHE="${dir}/cache" \
      scripts/tour.sh >"${dir}/tour.out" 2>"${dir}/tour.err"); then
      tail -n 20 "${dir}/tour.err" >&2
      die "the cold run failed (${dir} kept)"
    fi
    times+=("$(awk -v a="${start}" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')")
    grep -F ' ✓ ' "${dir}/tour.err" | grep -F ' s)' | sed 's/^/  /'
    chmod -R u+w "${dir}" && rm -rf "${dir}"
  done
  local m
  m="$(printf '%s\n' "${times[@]}" | median)"
  printf 'cold first run of scripts/tour.sh (fresh clone, empty caches), %d runs: median %s s (runs: %s); goal <= 480 s (%s)\n' \
    "${runs}" "${m}" "${times[*]}" "$(awk -v m="${m}" 'BEGIN { print (m <= 480 ? "met" : "not met") }')"
}

# tour_steps REPORT...: where the tour's seconds go, from `sa-lab tour -o
# json` reports: bring-up, each chapter by kind of step, tear-down (medians).
tour_steps() {
  python3 - "$@" <<'PY'
import json, statistics, sys

reports = [json.load(open(f)) for f in sys.argv[1:]]
med = lambda xs: statistics.median(xs)
print(f"where the tour's seconds go (median of {len(reports)} runs with the audit log):")
print(f"  {'bring-up':<20} {med([r['up_seconds'] for r in reports]):5.2f} s")
for i, chapter in enumerate(reports[0]["chapters"]):
    runs = [r["chapters"][i] for r in reports]
    kinds = sorted({k for c in runs for k in c["steps"]})
    steps = {k: med([c["steps"].get(k, 0.0) for c in runs]) for k in kinds}
    total = med([c["seconds"] for c in runs])
    steps["rest of the scenario"] = max(0.0, total - sum(steps.values()))
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(steps.items(), key=lambda kv: -kv[1]) if v >= 0.05)
    print(f"  {chapter['chapter']:<20} {total:5.2f} s: {parts}")
print(f"  {'tear-down':<20} {med([r['down_seconds'] for r in reports]):5.2f} s")
# Chapters 1-5 alone: the tour without the later chapters' time.
first = med([r["seconds"] - sum(c["seconds"] for c in r["chapters"][5:]) for r in reports])
every = med([r["seconds"] for r in reports])
met = lambda ok: "met" if ok else "not met"
print(f"goals: chapters 1-5 with bring-up and tear-down {first:.2f} s <= 12 s ({met(first <= 12)}); "
      f"all {len(reports[0]['chapters'])} chapters {every:.2f} s <= 20 s ({met(every <= 20)})")
PY
}

median() {
  sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'
}

# How much slower A is than B, as a signed percentage ("+3.1 %").
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f %%", (a / b - 1) * 100 }'
}

# Why kind cannot run here, or nothing.
kind_unavailable() {
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    return 0
  fi
  if [[ "${SA_LAB_KIND_NODE_IMAGE:-auto}" == upstream ]]; then
    echo "no Docker engine answers (the upstream node image needs one)"
  elif [[ "$(id -u)" -ne 0 ]]; then
    echo "no Docker engine, and the local node image needs root (rootful podman)"
  elif ! command -v podman >/dev/null 2>&1 && ! command -v apt-get >/dev/null 2>&1; then
    echo "neither Docker nor podman is installed"
  fi
}

# The kind cluster bench_kind made, for the exit trap.
KIND_BENCH_CLUSTER=""

# kind_up NAME [ARGS...] / kind_down NAME: quiet, logging to the bench's state dir.
kind_up() { scripts/kind-up.sh --name "$@" >/dev/null 2>>"${SA_LAB_HOME}/kind.log"; }
kind_down() { scripts/kind-down.sh --name "$1" --no-logs >/dev/null 2>>"${SA_LAB_HOME}/kind.log"; }
# kind_failed WHAT: the end of the kind log (the state dir goes on exit), then stop.
kind_failed() {
  tail -n 20 "${SA_LAB_HOME}/kind.log" >&2
  die "kind: $1 failed (log above)"
}

bench_kind() {
  local runs="$1" pod_runs="$2" why name i start times=() which
  why="$(kind_unavailable)"
  if [[ -n "${why}" ]]; then
    echo "kind: not measured: ${why}"
    return 0
  fi
  name="sa-lab-bench-$$"
  KIND_BENCH_CLUSTER="${name}"
  trap 'kind_down "${KIND_BENCH_CLUSTER}" || true; rm -rf "${SA_LAB_HOME}"' EXIT
  # Not timed: the first bring-up builds (or finds cached) kind and the node image.
  if ! kind_up "${name}" --skip-image || ! kind_down "${name}"; then
    kind_failed "the first bring-up"
  fi
  for ((i = 0; i < runs; i++)); do
    start="$(date +%s.%N)"
    kind_up "${name}" --skip-image || kind_failed "kind-up"
    times+=("$(awk -v a="${start}" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')")
    which="$(cat "$(cluster_dir "${name}")/node-image")"
    ((i == runs - 1)) || kind_down "${name}"
  done
  printf 'kind (%s node image) create -> ready, node image cached, %d runs: median %s s (runs: %s)\n' \
    "${which}" "${runs}" "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"
  kind_up "${name}" || kind_failed "loading the lab image"
  SA_LAB_BENCH_KIND="${name}" cargo bench --profile dev --locked --quiet -p sa-lab-e2e --bench startup -- 0 "${pod_runs}"
  kind_down "${name}"
}

main() {
  local up_runs="${1:-5}" pod_runs="${2:-20}" tour_runs="${3:-3}"
  local delete_runs="${4:-5}" lease_renewals="${5:-3}" audit_runs="${6:-3}" check_runs="${7:-10}"
  local kind_runs="${8:-3}" cold_runs="${9:-0}"
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

  # With and without the audit log, interleaved so both see the same machine.
  local times=() plain=() reports=() i
  for ((i = 0; i < tour_runs; i++)); do
    reports+=("${SA_LAB_HOME}/tour-${i}.json")
    times+=("$(REPORT="${reports[i]}" elapsed target/debug/sa-lab tour -o json)")
    plain+=("$(elapsed target/debug/sa-lab tour --no-audit-log)")
  done
  printf 'sa-lab tour wall time, %d runs: median %s s (runs: %s)\n' \
    "${tour_runs}" "$(printf '%s\n' "${times[@]}" | median)" "${times[*]}"
  printf 'sa-lab tour --no-audit-log, %d runs: median %s s (runs: %s); audit log cost: %s\n' \
    "${tour_runs}" "$(printf '%s\n' "${plain[@]}" | median)" "${plain[*]}" \
    "$(ratio "$(printf '%s\n' "${times[@]}" | median)" "$(printf '%s\n' "${plain[@]}" | median)")"
  tour_steps "${reports[@]}"

  cargo bench --profile dev --locked --quiet -p sa-lab-e2e --bench audit -- 200 "${audit_runs}"
  bench_check "${check_runs}"
  bench_kind "${kind_runs}" "${pod_runs}"
  bench_cold "${cold_runs}"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
