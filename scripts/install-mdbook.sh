#!/usr/bin/env bash
# Install the pinned mdBook that builds the sa-lab book, into a per-version
# cache, only if it is not there yet. Prints the path of the mdbook binary on
# stdout (progress goes to stderr), so callers can do:
#
#   MDBOOK="$(scripts/install-mdbook.sh)"
#   "${MDBOOK}" build book
#
#   scripts/install-mdbook.sh            install into the cache if needed
#   scripts/install-mdbook.sh --print    print the binary path, install nothing
#
# Only the HTML renderer and search are built (no `serve`/`watch`): that is all
# CI needs and it compiles in a fraction of the time. For live preview while
# writing, use any mdbook 0.5 with `mdbook serve book`.
set -o errexit -o nounset -o pipefail

MDBOOK_VERSION="0.5.4"

root_dir() {
  local cache="${XDG_CACHE_HOME:-${HOME}/.cache}"
  echo "${cache}/sa-lab/mdbook-${MDBOOK_VERSION}"
}

log() { printf ' • %s\n' "$*" >&2; }

installed_version_ok() {
  local bin="$1"
  [[ -x "${bin}" ]] || return 1
  "${bin}" --version 2>/dev/null | grep -qx "mdbook v${MDBOOK_VERSION}"
}

main() {
  local root bin
  root="$(root_dir)"
  bin="${root}/bin/mdbook"

  if [[ "${1:-}" == "--print" ]]; then
    echo "${bin}"
    return
  fi

  if installed_version_ok "${bin}"; then
    log "mdbook ${MDBOOK_VERSION}: cached in ${root}"
    echo "${bin}"
    return
  fi

  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
  fi

  log "building mdbook ${MDBOOK_VERSION} into ${root} (a few minutes on 2 cores)"
  mkdir -p "${root}"
  cargo install mdbook \
    --version "${MDBOOK_VERSION}" \
    --locked \
    --no-default-features --features search \
    --root "${root}" >&2

  if ! installed_version_ok "${bin}"; then
    echo "error: ${bin} is not mdbook v${MDBOOK_VERSION} after install" >&2
    exit 1
  fi
  log "mdbook ${MDBOOK_VERSION}: installed in ${root}"
  echo "${bin}"
}

main "$@"
