#!/usr/bin/env bash
# Regenerate the book's transcripts (book/src/transcripts/NN-slug.txt) from
# real runs: `target/debug/sa-lab run NN` (84 columns wide, what fits the
# book's content column) against a local cluster started for
# the purpose, then torn down. The first line of each transcript is the
# command; generated names, UIDs, ports and times are redacted so the files
# only change when the behaviour does.
#
#   scripts/capture-transcripts.sh            every chapter (labs/NN-slug)
#   scripts/capture-transcripts.sh 02 03      only these chapters
#   scripts/capture-transcripts.sh --check    regenerate into a temp dir and
#                                             fail if a transcript differs
#
# Environment:
#   SA_LAB_TRANSCRIPT_CLUSTER   cluster name (default: sa-lab-transcripts)
#   SA_LAB_NO_BUILD=1           do not run `cargo build` first
#
# Needs the Kubernetes binaries (scripts/install-k8s.sh).
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
TRANSCRIPTS="${REPO_ROOT}/book/src/transcripts"
SA_LAB="${REPO_ROOT}/target/debug/sa-lab"
CLUSTER="${SA_LAB_TRANSCRIPT_CLUSTER:-sa-lab-transcripts}"
WORK=""
CLUSTER_STARTED=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ ${CLUSTER_STARTED} -eq 1 ]]; then
    if [[ ${rc} -ne 0 ]]; then
      "${SA_LAB}" status --name "${CLUSTER}" >&2 || true
    fi
    "${SA_LAB}" down --name "${CLUSTER}" >&2 || true
    CLUSTER_STARTED=0
  fi
  if [[ -n "${WORK}" && -d "${WORK}" ]]; then
    rm -rf "${WORK}"
  fi
  exit "${rc}"
}

# Everything that changes from run to run without meaning anything.
redact() {
  perl -pe '
    s/\e\[[0-9;]*[A-Za-z]//g;                                   # colours
    s/eyJ[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)*/<jwt>/g;           # token bits
    s/\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/<uid>/g;
    s/\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?/<time>/g;
    s/\b\d{4}-\d\d-\d\d\b/<date>/g;                            # label dates
    s/\b1[6-9]\d{8}\b/<unix-time>/g;                            # iat, exp, ...
    s/\b(127\.0\.0\.1|localhost|\[::1\]):\d+/$1:<port>/g;
    s/\b\d+\.\d+m?s\b/<duration>/g;                             # 1.23s
    s/\b\d+ms\b/<duration>/g;                                   # 850ms
    # generateName suffixes: 5 lower-case letters and digits, at least one
    # of each (kube-api-access-x7k2q, lab-03-rolebinding-4bz9c).
    s/(?<=-)(?=[a-z0-9]{5}\b)(?=[a-z]*[0-9])(?=[0-9]*[a-z])[a-z0-9]{5}\b/xxxxx/g;
    s/\b(kube-api-access-)[a-z0-9]{5}\b/${1}xxxxx/g;             # may be all letters
    s/[ \t]+$//;
  '
}

chapters() {
  if [[ $# -gt 0 ]]; then
    local n d
    for n in "$@"; do
      d="$(find "${REPO_ROOT}/labs" -mindepth 1 -maxdepth 1 -type d \
        -name "$(printf '%02d' "$((10#${n%%-*}))")-*" | head -n1)"
      if [[ -z "${d}" ]]; then
        fail "no chapter ${n} under labs/ (have: $(list_slugs | tr '\n' ' '))"
        exit 1
      fi
      basename "${d}"
    done
  else
    list_slugs
  fi
}

list_slugs() {
  find "${REPO_ROOT}/labs" -mindepth 1 -maxdepth 1 -type d -name '[0-9][0-9]-*' \
    -printf '%f\n' | sort
}

main() {
  local check=0 args=()
  for a in "$@"; do
    case "${a}" in
      --check) check=1 ;;
      -h | --help)
        sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        return
        ;;
      *) args+=("${a}") ;;
    esac
  done

  local slugs listed
  listed="$(chapters "${args[@]+"${args[@]}"}")"
  mapfile -t slugs <<<"${listed}"
  [[ -n "${listed}" ]] || slugs=()
  if [[ ${#slugs[@]} -eq 0 ]]; then
    fail "no chapters found under labs/"
    exit 1
  fi

  trap cleanup EXIT INT TERM
  WORK="$(mktemp -d)"

  if [[ "${SA_LAB_NO_BUILD:-0}" != "1" ]]; then
    log "cargo build (sa-lab and every lab)"
    (cd "${REPO_ROOT}" && cargo build --quiet)
  fi
  if [[ ! -x "${SA_LAB}" ]]; then
    fail "${SA_LAB} not found: run cargo build"
    exit 1
  fi

  # A cluster of our own, so a learner's cluster is never touched.
  "${SA_LAB}" down --name "${CLUSTER}" >/dev/null 2>&1 || true
  log "starting local cluster ${CLUSTER}"
  CLUSTER_STARTED=1
  local env_lines
  env_lines="$("${SA_LAB}" up --name "${CLUSTER}")"
  eval "${env_lines}"
  ok "cluster ${CLUSTER} is up"

  local slug num raw out changed=0
  for slug in "${slugs[@]}"; do
    num="${slug%%-*}"
    raw="${WORK}/${slug}.raw"
    out="${WORK}/${slug}.txt"
    log "sa-lab run ${num}"
    if ! NO_COLOR=1 COLUMNS=84 "${SA_LAB}" run "${num}" >"${raw}" 2>"${WORK}/${slug}.err"; then
      cat "${raw}" "${WORK}/${slug}.err" >&2
      fail "sa-lab run ${num} did not match its expected table; transcript not written"
      exit 1
    fi
    {
      printf '$ sa-lab run %s\n' "${num}"
      redact <"${raw}"
    } >"${out}"

    if [[ ${check} -eq 1 ]]; then
      if ! diff -u "${TRANSCRIPTS}/${slug}.txt" "${out}" >&2; then
        fail "${slug}: transcript differs from a fresh run"
        changed=1
      else
        ok "${slug}: transcript matches"
      fi
    else
      mkdir -p "${TRANSCRIPTS}"
      mv "${out}" "${TRANSCRIPTS}/${slug}.txt"
      ok "book/src/transcripts/${slug}.txt"
    fi
  done
  return "${changed}"
}

main "$@"
