#!/usr/bin/env bash
# Soak: the local cluster over and over, counting what failed and what leaked.
#
#   scripts/soak.sh [CYCLES=10] [TOURS=2] [RUNS=10] [MAX_MINUTES=60]
#
# 1. CYCLES times: `sa-lab up`, a chapter (01..08 in turn), `kill -9` of one
#    component (each in turn, as `sa-lab status` lists them) and the supervisor's restart awaited, the
#    chapter again, `sa-lab down`;
# 2. TOURS times: `sa-lab tour` (its own cluster, brought up and torn down);
# 3. one cluster left running for RUNS chapter runs: the cluster's resident
#    memory after the first run and after the last.
# After every `down` and every tour it looks for what was left behind: a
# process of that cluster, a port it listened on, a mount under the state
# directory, the cluster's state directory. Every command's output and every
# component log is scanned for JWTs and PEM private keys (the pki directory,
# kubeconfigs and Pod volumes hold credentials by design and are not logs).
# Starts nothing new after MAX_MINUTES (saying so). Exits 1 if anything
# failed, leaked or a secret was found; a failed cycle's outputs and cluster
# logs are kept in a directory it names. Uses the node $SA_LAB_NODE picks.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"

SA_LAB=""
FAILURES=0
HEALED=0
LEAKS=()
SECRETS=0
DEADLINE=0
KEEP=""

# Every cluster the soak's state dir still has is stopped, then the dir goes.
cleanup() {
  local dir
  for dir in "${SA_LAB_HOME}"/clusters/*/; do
    [[ -d "${dir}" ]] || continue
    "${SA_LAB}" down --name "$(basename "${dir}")" >/dev/null 2>&1 || true
  done
  rm -rf "${SA_LAB_HOME}"
}

failed() {
  FAILURES=$((FAILURES + 1))
  fail "$*"
}

# Keeps what a failed cycle leaves to read (its outputs and the cluster's
# logs) in KEEP, which outlives the soak's state directory.
keep() {
  local name="$1" dest
  [[ -n "${KEEP}" ]] || KEEP="$(mktemp -d "${TMPDIR:-/tmp}/sa-lab-soak-failed.XXXXXX")"
  dest="${KEEP}/${name}"
  mkdir -p "${dest}"
  cp -a "${SA_LAB_HOME}/out-${name}".* "${dest}/" 2>/dev/null || true
  cp -a "$(cluster_dir "${name}")/logs" "${dest}/" 2>/dev/null || true
}

# Runs "$@" with its output in FILE; on failure counts it and shows the tail.
attempt() {
  local what="$1" out="$2"
  shift 2
  if "$@" >"${out}" 2>&1; then
    return 0
  fi
  failed "${what}: $* exited $?"
  tail -n 15 "${out}" | sed 's/^/     /' >&2
  return 1
}

# The pids whose command line contains one of the given strings.
pids_mentioning() {
  local pid args=()
  for pid in "$@"; do args+=(-e "${pid}"); done
  for pid in /proc/[0-9]*; do
    pid="${pid#/proc/}"
    ((pid == $$ || pid == BASHPID)) && continue
    { tr '\0' ' ' <"/proc/${pid}/cmdline"; } 2>/dev/null | grep -qF "${args[@]}" && echo "${pid}"
  done
  return 0
}

# The pids of cluster NAME: its state dir is in every component's flags, and
# its supervisor is `sa-lab supervise --name NAME`.
cluster_pids() {
  pids_mentioning "$(cluster_dir "$1")/" "supervise --name $1 "
}

# The TCP ports cluster NAME's processes listen on.
listening_ports() {
  local pid
  for pid in $(cluster_pids "$1"); do
    ss -ltnpH 2>/dev/null | awk -v p="pid=${pid}," 'index($0, p) { n = split($4, a, ":"); print a[n] }'
  done | sort -u
}

port_listening() {
  ss -ltnH "sport = :$1" 2>/dev/null | grep -q .
}

# JWTs and PEM private keys in the given files (count on stdout).
secrets_in() {
  local n=0 f
  for f in "$@"; do
    [[ -f "${f}" ]] || continue
    n=$((n + $(grep -cE -e 'eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}' \
      -e '-----BEGIN [A-Z ]*PRIVATE KEY-----' "${f}" || true)))
  done
  echo "${n}"
}

scan() {
  local where="$1" found
  shift
  found="$(secrets_in "$@")"
  if ((found > 0)); then
    SECRETS=$((SECRETS + found))
    fail "${where}: ${found} line(s) with a JWT or a private key"
  fi
}

# What a cluster that is gone left behind: PORTS are the ones it listened on.
check_gone() {
  local name="$1" pids port
  shift
  pids="$(cluster_pids "${name}" | tr '\n' ' ')"
  [[ -z "${pids// /}" ]] || LEAKS+=("${name}: processes ${pids}")
  for port in "$@"; do
    port_listening "${port}" && LEAKS+=("${name}: port ${port} still listening")
  done
  if grep -qF " ${SA_LAB_HOME}/" /proc/self/mountinfo; then
    LEAKS+=("${name}: mounts under ${SA_LAB_HOME}: $(grep -F " ${SA_LAB_HOME}/" /proc/self/mountinfo | awk '{print $5}' | tr '\n' ' ')")
  fi
  [[ ! -e "$(cluster_dir "${name}")" ]] || LEAKS+=("${name}: $(cluster_dir "${name}") left")
  return 0
}

component_field() {
  "${SA_LAB}" status --name "$1" -o json |
    jq -r --arg c "$2" --arg f "$3" '.[0].components[] | select(.name == $c) | .[$f] // empty'
}

# kill -9 of component C of cluster NAME; waits (60 s at most) until the
# supervisor runs a new process for it.
kill_and_heal() {
  local name="$1" c="$2" pid restarts i
  pid="$(component_field "${name}" "${c}" pid)"
  restarts="$(component_field "${name}" "${c}" restarts)"
  if [[ -z "${pid}" ]]; then
    failed "${name}: ${c} has no pid to kill"
    return 1
  fi
  kill -9 "${pid}"
  for ((i = 0; i < 240; i++)); do
    if [[ "$(component_field "${name}" "${c}" running)" == true &&
      "$(component_field "${name}" "${c}" pid)" != "${pid}" &&
      "$(component_field "${name}" "${c}" restarts)" -gt "${restarts}" ]]; then
      HEALED=$((HEALED + 1))
      return 0
    fi
    sleep 0.25
  done
  failed "${name}: ${c} (pid ${pid}) was not restarted within 60 s"
  return 1
}

time_left() {
  (($(date +%s) < DEADLINE)) && return 0
  warn "the time bound is reached: nothing new is started"
  return 1
}

cycles() {
  local n="$1" i name chapter c ports logs out failures_before
  local names=()
  for ((i = 0; i < n; i++)); do
    time_left || return 0
    name="soak-$$-${i}"
    failures_before="${FAILURES}"
    chapter="$(printf '%02d' $((i % 8 + 1)))"
    out="${SA_LAB_HOME}/out-${name}"
    log "cycle $((i + 1))/${n}: up, run ${chapter}, kill -9 a component, run ${chapter}, down"
    if attempt "up ${name}" "${out}.up" "${SA_LAB}" up --name "${name}"; then
      attempt "run ${chapter} on ${name}" "${out}.run1" "${SA_LAB}" run "${chapter}" --name "${name}" || true
      # Each component in turn, as the cluster names them (the kubelet node
      # has more).
      mapfile -t names < <("${SA_LAB}" status --name "${name}" -o json | jq -r '.[0].components[].name')
      c="${names[i % ${#names[@]}]}"
      log "  kill -9 ${c}"
      if kill_and_heal "${name}" "${c}"; then
        attempt "run ${chapter} after ${c} healed" "${out}.run2" "${SA_LAB}" run "${chapter}" --name "${name}" || true
      fi
    fi
    mapfile -t logs < <(find "$(cluster_dir "${name}")/logs" -type f 2>/dev/null)
    scan "${name} logs" "${logs[@]}"
    ((FAILURES == failures_before)) || keep "${name}"
    mapfile -t ports < <(listening_ports "${name}")
    attempt "down ${name}" "${out}.down" "${SA_LAB}" down --name "${name}" || true
    scan "${name} output" "${out}".*
    check_gone "${name}" "${ports[@]}"
  done
}

tours() {
  local n="$1" i out name pids
  for ((i = 0; i < n; i++)); do
    time_left || return 0
    log "tour $((i + 1))/${n}"
    out="${SA_LAB_HOME}/out-tour-${i}.log"
    attempt "tour" "${out}" "${SA_LAB}" tour || keep "tour-${i}"
    scan "tour output" "${out}"
    for name in "${SA_LAB_HOME}"/clusters/tour-*; do
      [[ -e "${name}" ]] && LEAKS+=("tour: ${name} left")
    done
    pids="$(pids_mentioning "${SA_LAB_HOME}/clusters/tour-" | tr '\n' ' ')"
    [[ -z "${pids// /}" ]] || LEAKS+=("tour: processes ${pids}")
    if grep -qF " ${SA_LAB_HOME}/" /proc/self/mountinfo; then
      LEAKS+=("tour: mounts under ${SA_LAB_HOME}")
    fi
  done
}

# Each process of cluster NAME, one line each: its name (sa-lab's own with
# its subcommand) and its resident memory in kB, proportional (Pss: a page
# several of them map, such as their one control-plane binary's, counts once
# in all), as the benchmark counts it.
pss_by_process() {
  local pid kb argv
  for pid in $(cluster_pids "$1"); do
    kb="$(awk '/^Pss:/ {print $2}' "/proc/${pid}/smaps_rollup" 2>/dev/null || true)"
    mapfile -d '' -t argv <"/proc/${pid}/cmdline" 2>/dev/null || continue
    ((${#argv[@]} > 0)) || continue
    argv[0]="${argv[0]##*/}"
    [[ "${argv[0]}" == sa-lab ]] && argv[0]="sa-lab-${argv[1]:-}"
    printf '%s %s\n' "${argv[0]}" "${kb:-0}"
  done
}

# The cluster's memory (MiB) from pss_by_process lines on stdin.
total_mib() { awk '{ t += $2 } END { print int(t / 1024) }'; }

# What each process grew by (MiB), from two pss_by_process snapshots.
growth_by_process() {
  awk 'NR == FNR { a[$1] += $2; next } { b[$1] += $2 }
    END { for (k in b) printf "%s %+d\n", k, (b[k] - a[k]) / 1024 }' <(printf '%s\n' "$1") <(printf '%s\n' "$2") |
    sort | paste -sd, - | sed 's/,/, /g'
}

memory_growth() {
  local runs="$1" name="soak-mem-$$" first last i chapter out ports before after
  ((runs > 0)) || return 0
  time_left || return 0
  out="${SA_LAB_HOME}/out-${name}"
  log "one cluster, ${runs} chapter runs: its memory after the first run and after the last"
  attempt "up ${name}" "${out}.up" "${SA_LAB}" up --name "${name}" || return 0
  for ((i = 0; i < runs; i++)); do
    chapter="$(printf '%02d' $((i % 8 + 1)))"
    attempt "run ${chapter} (run $((i + 1)) on ${name})" "${out}.run" "${SA_LAB}" run "${chapter}" --name "${name}" || true
    scan "${name} output" "${out}.run"
    ((i == 0)) && before="$(pss_by_process "${name}")"
    time_left || break
  done
  after="$(pss_by_process "${name}")"
  first="$(total_mib <<<"${before}")"
  last="$(total_mib <<<"${after}")"
  MEMORY="$(printf '%s MiB after the first run, %s MiB after run %d (%+d MiB: %s)' \
    "${first}" "${last}" "${i}" $((last - first)) "$(growth_by_process "${before}" "${after}")")"
  mapfile -t ports < <(listening_ports "${name}")
  attempt "down ${name}" "${out}.down" "${SA_LAB}" down --name "${name}" || true
  check_gone "${name}" "${ports[@]}"
}

main() {
  local cycles_n="${1:-10}" tours_n="${2:-2}" runs="${3:-10}" minutes="${4:-60}"
  local started leak
  for arg in "${cycles_n}" "${tours_n}" "${runs}" "${minutes}"; do
    [[ "${arg}" =~ ^[0-9]+$ ]] || die "not a count: ${arg}" "usage: scripts/soak.sh [CYCLES=10] [TOURS=2] [RUNS=10] [MAX_MINUTES=60]"
  done
  cd "${REPO_ROOT}"
  require_debian_packages "the soak reads cluster status and sockets" jq=jq ss=iproute2
  SA_LAB_K8S_BIN="$(scripts/install-k8s.sh)"
  export SA_LAB_K8S_BIN SA_LAB_QUIET=1
  if [[ "${SA_LAB_NODE:-sandbox}" == kubelet ]]; then
    SA_LAB_NODE_BIN="$(scripts/install-node-bins.sh)"
    export SA_LAB_NODE_BIN
  fi
  cargo build --workspace --bins --locked --quiet
  SA_LAB="${REPO_ROOT}/target/debug/sa-lab"
  SA_LAB_HOME="$(mktemp -d "${TMPDIR:-/tmp}/sa-lab-soak.XXXXXX")"
  export SA_LAB_HOME
  trap cleanup EXIT
  started="$(date +%s)"
  DEADLINE=$((started + minutes * 60))
  MEMORY="not measured"

  cycles "${cycles_n}"
  tours "${tours_n}"
  memory_growth "${runs}"

  printf 'soak (%s node, %d cores, %s): asked for %d up/run/kill/run/down cycles, %d tour(s), %d runs on one cluster; took %d s\n' \
    "${SA_LAB_NODE:-sandbox}" "$(nproc)" "$(uname -r)" "${cycles_n}" "${tours_n}" "${runs}" $(($(date +%s) - started))
  printf '  components killed and healed: %d\n' "${HEALED}"
  printf '  failures: %d\n' "${FAILURES}"
  printf '  leaks (processes, ports, mounts, state dirs): %d\n' "${#LEAKS[@]}"
  for leak in "${LEAKS[@]}"; do printf '    %s\n' "${leak}"; done
  printf '  secrets found (JWTs, private keys in outputs and logs): %d\n' "${SECRETS}"
  printf '  memory: %s\n' "${MEMORY}"
  [[ -z "${KEEP}" ]] || printf '  outputs and cluster logs of the failed cycles: %s\n' "${KEEP}"
  ((FAILURES == 0 && ${#LEAKS[@]} == 0 && SECRETS == 0))
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
