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

cluster_dir() { printf '%s/clusters/%s\n' "$(state_dir)" "$1"; }
logs_dir() { printf '%s/logs/kind-%s\n' "$(state_dir)" "$1"; }
