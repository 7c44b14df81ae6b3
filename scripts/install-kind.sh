#!/usr/bin/env bash
# Build kind from its Go module (the version pinned in tools/kindbin/go.mod)
# and cache it per version. Builds only when missing; prints the path of the
# kind binary on stdout.
#
#   scripts/install-kind.sh            build into the cache if needed
#   scripts/install-kind.sh --print    print the path, build nothing
#
# The cache is ${SA_LAB_CACHE:-${XDG_CACHE_HOME:-~/.cache}/sa-lab}/kind/<version>/kind.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"

kind_version() {
  sed -n 's|^\s*sigs.k8s.io/kind \(v[0-9.]*\).*$|\1|p' "${REPO_ROOT}/tools/kindbin/go.mod" | head -n1
}

main() {
  local version out
  version="$(kind_version)"
  [[ -n "${version}" ]] || die "no sigs.k8s.io/kind version in tools/kindbin/go.mod"
  out="$(cache_root)/kind/${version}/kind"
  if [[ "${1:-}" == "--print" ]]; then
    printf '%s\n' "${out}"
    return 0
  fi
  if [[ -x "${out}" ]]; then
    log "kind ${version}: cached in ${out}"
    printf '%s\n' "${out}"
    return 0
  fi
  command -v go >/dev/null 2>&1 ||
    die "Go is not installed: kind is built from its Go module" \
      "install Go >= 1.26 (https://go.dev/doc/install), or put kind ${version} on PATH as KIND=/path/to/kind"
  log "building kind ${version} from its Go module"
  mkdir -p "$(dirname "${out}")"
  local tmp
  tmp="$(mktemp "${out}.XXXXXX")"
  if ! (cd "${REPO_ROOT}/tools/kindbin" &&
    go_compile -ldflags "-s -w" -o "${tmp}" sigs.k8s.io/kind); then
    rm -f -- "${tmp}"
    die "building kind ${version} failed (output above)"
  fi
  chmod 0755 "${tmp}"
  mv -f -- "${tmp}" "${out}"
  ok "built ${out}"
  printf '%s\n' "${out}"
}

main "$@"
