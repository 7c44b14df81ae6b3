#!/usr/bin/env bash
# The book as a reader sees it: builds the book, then opens every page in
# headless Chromium (Debian's package, driven by playwright-core from npm)
# and checks that each page loads with no console error and fetches nothing
# from outside the book, that every internal link and anchor resolves, that
# every picture (the diagrams among them) is drawn with a non-zero size inside
# the content column, that no code block is wider than that column, and that
# search finds "automountServiceAccountToken" on the automount chapter. First
# it runs the same check on a small book with one mistake of each kind
# (e2e/browser/fixture) and fails unless every mistake is caught. Problems
# listed in e2e/browser/known-problems.txt are shown but do not fail it.
#
#   scripts/check-book.sh
#
# Artefacts go to target/book-check/: the built book (html/), problems.txt,
# and a screenshot of every page that failed a check (screenshots/).
# Installs what is missing: mdBook (cargo), Chromium (apt-get, as root),
# playwright-core (npm ci). CHROMIUM names another Chromium binary.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
readonly BROWSER_DIR="${REPO_ROOT}/e2e/browser"
readonly OUT="${REPO_ROOT}/target/book-check"

# playwright-core at the version package-lock.json pins, installed by npm ci.
ensure_driver() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    die "node and npm are not installed: the browser check runs on Node.js >= 20" \
      "Debian/Ubuntu: apt-get install -y nodejs npm"
  fi
  local want have=""
  want="$(node -p 'require(process.argv[1]).packages["node_modules/playwright-core"].version' \
    "${BROWSER_DIR}/package-lock.json")"
  if [[ -f "${BROWSER_DIR}/node_modules/playwright-core/package.json" ]]; then
    have="$(node -p 'require(process.argv[1]).version' \
      "${BROWSER_DIR}/node_modules/playwright-core/package.json")"
  fi
  if [[ "${have}" != "${want}" ]]; then
    log "installing playwright-core ${want} (npm ci; it downloads no browser)"
    (cd "${BROWSER_DIR}" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
}

# build SRC_DIR DEST_DIR: the book at SRC_DIR, built by the pinned mdBook.
build() {
  local log_file
  log_file="${OUT}/mdbook-$(basename "$2").log"
  if ! "${MDBOOK}" build "$1" --dest-dir "$2" >"${log_file}" 2>&1; then
    cat "${log_file}" >&2
    die "mdbook build $1 failed"
  fi
}

main() {
  cd "${REPO_ROOT}"
  MDBOOK="${MDBOOK:-$(scripts/install-mdbook.sh)}"
  if [[ -z "${CHROMIUM:-}" ]]; then
    require_debian_packages "the book check opens every page in Chromium" \
      chromium=chromium,fonts-liberation2
  fi
  ensure_driver

  rm -rf "${OUT}"
  mkdir -p "${OUT}"
  build book "${OUT}/html"
  build e2e/browser/fixture "${OUT}/fixture-html"

  log "self-test: the check on a book with one mistake of each kind"
  node "${BROWSER_DIR}/check-book.mjs" --self-test "${OUT}/fixture-html" \
    --out "${OUT}/self-test"
  log "the book, page by page, in headless Chromium"
  if ! node "${BROWSER_DIR}/check-book.mjs" "${OUT}/html" --out "${OUT}/screenshots" \
    --search automountServiceAccountToken --expect-page 05-automount.html \
    --known "${BROWSER_DIR}/known-problems.txt"; then
    die "the book failed the browser check" \
      "problems: ${OUT}/screenshots/problems.txt; screenshots of the failing pages next to it"
  fi
}

main "$@"
