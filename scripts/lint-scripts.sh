#!/usr/bin/env bash
# Lint every shell script of the repository with shellcheck: scripts/*.sh and
# .ci/run. Exits non-zero on any finding (all severities, style included).
#
#   scripts/lint-scripts.sh
#
# SHELLCHECK names the binary (default: shellcheck). In CI it is installed
# with `apt-get install -y shellcheck`.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
SHELLCHECK="${SHELLCHECK:-shellcheck}"

scripts_to_lint() {
  local f
  for f in "${REPO_ROOT}"/scripts/*.sh "${REPO_ROOT}/.ci/run"; do
    [[ -f "${f}" ]] && printf '%s\n' "${f}"
  done
  return 0
}

main() {
  command -v "${SHELLCHECK}" >/dev/null 2>&1 ||
    die "shellcheck is not installed" \
      "Debian/Ubuntu: apt-get install -y shellcheck; macOS: brew install shellcheck"
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
