#!/bin/sh
# Builds and tests the project image with whichever container engine works here (`make image`,
# `make image-test`; docs/image.md):
#
#   sh pipelines/image.sh engine                               the engine that works, or why none does
#   sh pipelines/image.sh build IMAGE TENSORFLOW BASE_IMAGE    build the Dockerfile as IMAGE
#   sh pipelines/image.sh test IMAGE TENSORFLOW                run tests/run_in_image.py inside IMAGE
#   sh pipelines/image.sh ready BASE_IMAGE                     exit 0 if both can run here, else say why
#
# Engines, in this order: docker with a daemon that answers, podman, buildah (`ENGINE=...` chooses).
# A binary is not enough: a docker client without a daemon is skipped. buildah runs with
# BUILDAH_ISOLATION=chroot unless that is set: the OCI runtime cannot create containers where the
# cgroup hierarchy is mixed (v1 + v2) or inside another container, and chroot works everywhere buildah
# does; its containers then share the host's network (the test server listens on 127.0.0.1 only).
set -eu
cd "$(dirname "$0")/.."

works() {
  case "$1" in
    docker|podman) "$1" info >/dev/null 2>&1 ;;
    buildah) buildah info >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

engine() {
  if [ -n "${ENGINE:-}" ]; then
    works "$ENGINE" || { echo "error: ENGINE=$ENGINE does not work here ($ENGINE info fails)" >&2; return 1; }
    echo "$ENGINE"; return 0
  fi
  tried=
  for candidate in docker podman buildah; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    works "$candidate" && { echo "$candidate"; return 0; }
    tried="$tried $candidate"
  done
  if [ -n "$tried" ]; then
    echo "error: no working container engine: 'ENGINE info' fails for each of:$tried (a docker client needs a running daemon)" >&2
  else
    echo "error: no container engine: install docker, podman or buildah" >&2
  fi
  return 1
}

size() {  # the engine's own figure for an image's size
  case "$1" in
    docker) docker image ls --format '{{.Size}}' "$2" ;;
    *) "$1" images --format '{{.Size}}' "$2" ;;
  esac
}

export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"

case "${1:-}" in
  engine)
    engine ;;
  build)
    image=$2 tensorflow=$3 base=$4
    e=$(engine)
    echo "building $image (TENSORFLOW=$tensorflow, BASE_IMAGE=$base) with $e" >&2
    case "$e" in
      # --layers: reuse the dependency layer when only code changed (docker and podman do by default)
      buildah) set -- buildah bud --layers ;;
      *) set -- "$e" build ;;
    esac
    # The commit the image's code comes from, for the lineage in model.json (`-dirty`: tracked
    # files differ from it); none outside a git checkout.
    commit=$(git rev-parse HEAD 2>/dev/null || true)
    if [ -n "$commit" ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
      commit="$commit-dirty"
    fi
    "$@" --build-arg "BASE_IMAGE=$base" --build-arg "TENSORFLOW=$tensorflow" \
      --build-arg "SOURCE_COMMIT=$commit" -t "$image" .
    echo "built $image: $(size "$e" "$image") (base $base: $(size "$e" "$base"))" >&2 ;;
  test)
    image=$2 tensorflow=$3
    e=$(engine)
    echo "testing $image with $e: tests/run_in_image.py as the image's user" >&2
    case "$e" in
      buildah)
        container=$(buildah from --pull-never "$image")
        trap 'buildah rm "$container" >/dev/null' EXIT
        network=; [ "$BUILDAH_ISOLATION" = chroot ] || network=--network=none
        buildah run $network "$container" -- python - "$tensorflow" < tests/run_in_image.py ;;
      *)
        "$e" run --rm -i --network=none "$image" python - "$tensorflow" < tests/run_in_image.py ;;
    esac ;;
  ready)  # an engine, and the base image here or pulled now
    base=$2
    e=$(engine)
    case "$e" in
      buildah) buildah inspect --type image "$base" >/dev/null 2>&1 || buildah pull -q "$base" >/dev/null 2>&1 ;;
      *) "$e" image inspect "$base" >/dev/null 2>&1 || "$e" pull -q "$base" >/dev/null 2>&1 ;;
    esac || { echo "error: the base image $base is not in $e's storage and cannot be pulled" >&2; exit 1; }
    echo "$e" ;;
  *)
    echo "error: usage: $0 engine | build IMAGE TENSORFLOW BASE_IMAGE | test IMAGE TENSORFLOW | ready BASE_IMAGE" >&2
    exit 1 ;;
esac
