# shellcheck shell=bash
# Shared by the scripts in scripts/: status lines in the style of kind
# (` • doing`, ` ✓ done`, ` ! warning`, ` ✗ failed`) on stderr, usage from a
# script's header comment, and sa-lab's state directory layout (the same rule
# as sa_lab::paths::home()). Source it after setting REPO_ROOT.

log() { printf ' • %s\n' "$*" >&2; }
ok() { printf ' ✓ %s\n' "$*" >&2; }
warn() { printf ' ! %s\n' "$*" >&2; }
fail() { printf ' ✗ %s\n' "$*" >&2; }

# die MESSAGE [DETAIL...]: a failure line, indented details, exit 1.
die() {
  fail "$1"
  shift
  local line
  for line in "$@"; do printf '   %s\n' "${line}" >&2; done
  exit 1
}

# Prints the calling script's header comment (line 2 up to `set -o`).
usage() {
  sed -n '2,/^set -o/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# $SA_LAB_HOME, else $XDG_STATE_HOME/sa-lab, else ~/.local/state/sa-lab.
state_dir() {
  if [[ -n "${SA_LAB_HOME:-}" ]]; then
    printf '%s\n' "${SA_LAB_HOME}"
  else
    printf '%s/sa-lab\n' "${XDG_STATE_HOME:-${HOME}/.local/state}"
  fi
}

# $SA_LAB_CACHE, else $XDG_CACHE_HOME/sa-lab, else ~/.cache/sa-lab: builds
# cached per version (Kubernetes, kind, the kind node image's parts).
cache_root() { printf '%s\n' "${SA_LAB_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/sa-lab}"; }

cluster_dir() { printf '%s/clusters/%s\n' "$(state_dir)" "$1"; }
logs_dir() { printf '%s/logs/kind-%s\n' "$(state_dir)" "$1"; }

# require_engine WHY HINT: the container CLI ($DOCKER, default docker) is
# installed and an engine answers; else say WHY it is needed and HINT.
require_engine() {
  local why="$1" hint="$2" err
  command -v "${DOCKER:-docker}" >/dev/null 2>&1 ||
    die "${DOCKER:-docker} is not installed: ${why}" "${hint}"
  if ! err="$("${DOCKER:-docker}" info --format '{{.ServerVersion}}' 2>&1 >/dev/null)"; then
    die "the ${DOCKER:-docker} CLI is installed but no container engine answers" \
      "start the engine (Docker Desktop, 'sudo systemctl start docker', or set DOCKER_HOST)" \
      "${DOCKER:-docker} info said: ${err//$'\n'/ }"
  fi
}

# Is there a kind cluster named $1? ($KIND, default kind.)
kind_cluster_exists() {
  "${KIND:-kind}" get clusters 2>/dev/null | grep -qx -- "$1"
}

# Saves kind cluster $1's logs under logs_dir, in a directory per run.
save_kind_logs() {
  local name="$1" dest
  dest="$(logs_dir "${name}")/$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -p "${dest}"
  if "${KIND:-kind}" export logs "${dest}" --name "${name}" >/dev/null 2>&1; then
    ok "cluster logs saved to ${dest}"
  else
    warn "could not save the cluster's logs (kind export logs failed)"
  fi
}

# require_debian_packages WHY COMMAND=PACKAGE[,PACKAGE]...: each COMMAND is on
# PATH, or its Debian PACKAGEs are installed with apt-get when running as
# root; else exit, saying WHY the command is needed and how to install it.
require_debian_packages() {
  local why="$1" pair missing=() pkgs
  shift
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 && continue
    IFS=, read -r -a pkgs <<<"${pair#*=}"
    missing+=("${pkgs[@]}")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "${missing[*]} not installed: ${why}" \
      "Debian/Ubuntu: sudo apt-get install -y --no-install-recommends ${missing[*]}"
  fi
  log "installing ${missing[*]} (Debian packages): ${why}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get could not install ${missing[*]}"
}
