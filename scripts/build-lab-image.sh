#!/usr/bin/env bash
# Build the lab image every lab manifest names: sa-lab-labs:<workspace version>.
#
# The tag comes from Cargo.toml's [workspace.package] version, the same version
# lab_kit::LAB_IMAGE is compiled from, so the tag the manifests name is the tag
# that was built. Never :latest.
#
#   scripts/build-lab-image.sh                   build sa-lab-labs:<version>
#   scripts/build-lab-image.sh --print-tag       print that tag, build nothing
#   scripts/build-lab-image.sh --image REF       also tag the image as REF (a registry
#                                                reference for the `current` provider)
#   scripts/build-lab-image.sh --image REF --push   ... and push REF
#
# Progress goes to stderr; the built tag (or REF) is printed on stdout.
# DOCKER (default: docker) names the container CLI.
set -o errexit -o nounset -o pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "${REPO_ROOT}/scripts/lib.sh"
readonly IMAGE_NAME="sa-lab-labs"
DOCKER="${DOCKER:-docker}"

# The version in Cargo.toml's [workspace.package] table.
workspace_version() {
  local version
  version="$(awk '
    /^\[/ { in_table = ($0 == "[workspace.package]") ; next }
    in_table && /^[[:space:]]*version[[:space:]]*=/ {
      sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
    }' "${REPO_ROOT}/Cargo.toml")"
  [[ -n "${version}" ]] || die "no version in [workspace.package] of ${REPO_ROOT}/Cargo.toml"
  printf '%s\n' "${version}"
}

image_tag() { printf '%s:%s\n' "${IMAGE_NAME}" "$(workspace_version)"; }

# Fails with a clear message when the CLI is missing or has no engine behind it.
check_ref() {
  local ref="$1"
  [[ "${ref}" =~ ^[^[:space:]]+$ ]] || die "--image ${ref}: an image reference has no spaces"
  [[ "${ref}" != *:latest ]] || die "--image ${ref}: never :latest; name the version, e.g. <registry>/sa-lab-labs:$(workspace_version)"
  local last="${ref##*/}"
  [[ "${last}" == *:* || "${last}" == *@* ]] ||
    die "--image ${ref}: give a tag (an untagged reference means :latest)"
}

build() {
  local tag="$1" version="$2"
  log "building ${tag} from ${REPO_ROOT}/Dockerfile (a cold build compiles every lab: several minutes)"
  DOCKER_BUILDKIT=1 "${DOCKER}" build \
    --file "${REPO_ROOT}/Dockerfile" \
    --build-arg "SA_LAB_VERSION=${version}" \
    --tag "${tag}" \
    "${REPO_ROOT}" >&2
  ok "built ${tag}"
}

main() {
  local print_tag=0 push=0 extra_ref=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --print-tag) print_tag=1 ;;
      --image)
        [[ $# -ge 2 ]] || die "--image needs a reference, e.g. registry.example.com/sa-lab-labs:$(workspace_version)"
        extra_ref="$2"
        shift
        ;;
      --image=*) extra_ref="${1#--image=}" ;;
      --push) push=1 ;;
      -h | --help)
        usage
        return 0
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done

  local version tag
  version="$(workspace_version)"
  tag="${IMAGE_NAME}:${version}"
  if [[ "${print_tag}" -eq 1 ]]; then
    printf '%s\n' "${tag}"
    return 0
  fi
  [[ -z "${extra_ref}" ]] || check_ref "${extra_ref}"
  [[ "${push}" -eq 0 || -n "${extra_ref}" ]] ||
    die "--push needs --image REF: ${tag} is a local name; push a registry reference"

  require_engine "the lab image is built with Docker (or podman: DOCKER=podman)" \
    "install Docker Engine or Docker Desktop, then run this script again"
  build "${tag}" "${version}"
  if [[ -n "${extra_ref}" ]]; then
    "${DOCKER}" tag "${tag}" "${extra_ref}"
    ok "tagged ${extra_ref}"
    if [[ "${push}" -eq 1 ]]; then
      log "pushing ${extra_ref}"
      "${DOCKER}" push "${extra_ref}" >&2
      ok "pushed ${extra_ref}"
    fi
    printf '%s\n' "${extra_ref}"
  else
    printf '%s\n' "${tag}"
  fi
}

# Only run when executed, so tests can source the functions.
if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  main "$@"
fi
