#!/usr/bin/env bash
# Build the fleet's images without any image registry (what `make images` runs):
#   1. the Debian base (deploy/docker/make-base-image.sh; skipped when it exists),
#   2. cxr-triage:latest from the Dockerfile on that base, with torch and the other wheels from this host's pip
#      sources (its local wheel folders served on loopback for the time of the build, PyPI or the site's index for
#      the rest), and
#   3. Redis and PostgreSQL from Debian's packages (deploy/docker/{redis,postgres}.Dockerfile),
# each with the docker layer cache, and prints how long each took and how large each image is.
#
#   deploy/docker/build-images.sh [app|redis|postgres ...]     # default: all three (and the base when missing)
#
# Environment (all optional):
#   BASE_IMAGE      base image to build on          (default local/bookworm-python:3.11; made when missing)
#   APP_IMAGE       tag of the application image    (default cxr-triage:latest)
#   REDIS_IMAGE     tag of the Redis image          (default local/redis:7-bookworm)
#   POSTGRES_IMAGE  tag of the PostgreSQL image     (default local/postgres:15-bookworm)
#   WHEEL_PORT      loopback port of the wheel server (default 38111; a fixed port keeps the build cache valid)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST (or pip's configuration files)
#                   where pip finds packages, as for pip on this host: an air-gapped site's own index URL is
#                   passed to the build as it is; a local folder (find-links /srv/wheels, file:///srv/pypi/simple)
#                   is served on 127.0.0.1:WHEEL_PORT during the build and passed as that URL
#   DOCKER          docker CLI                      (default: docker)
# Needs a running dockerd; builds use --network host (no bridge needed).
set -euo pipefail
cd "$(dirname "$0")/../.."

export BASE_IMAGE=${BASE_IMAGE:-local/bookworm-python:3.11}
APP_IMAGE=${APP_IMAGE:-cxr-triage:latest}
REDIS_IMAGE=${REDIS_IMAGE:-local/redis:7-bookworm}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-local/postgres:15-bookworm}
WHEEL_PORT=${WHEEL_PORT:-38111}
DOCKER=${DOCKER:-docker}
# The classic builder: it works with docker 20.10's daemon through any docker CLI without the buildx plugin,
# and it shares its layer cache with docker-compose 1.x builds.
export DOCKER_BUILDKIT=0

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(app redis postgres)

# One build at a time on this host (two test runs at once): the second waits and then finds the first's layers cached.
if command -v flock >/dev/null; then
  exec 9>"${TMPDIR:-/tmp}/cxr-triage-images.lock"
  flock 9
fi

summary=()
timed() {  # timed NAME COMMAND...: run, record the seconds it took
  local name=$1 started
  shift
  started=$(date +%s)
  "$@"
  summary+=("$(printf '%-10s %5ss' "$name" "$(( $(date +%s) - started ))")")
}

timed base deploy/docker/make-base-image.sh

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

pip_args=()
if [[ " ${targets[*]} " == *" app "* ]]; then
  # pip's sources as configured on this host (its files and PIP_* variables): folders on this host are served on
  # loopback while the build runs, URLs (an air-gapped site's own index) are passed on as they are.
  python3 deploy/docker/wheel_server.py --port "$WHEEL_PORT" --env-file "$work/pip.env" &
  server_pid=$!
  for _ in $(seq 1 300); do
    [ -e "$work/pip.env" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -e "$work/pip.env" ] || { echo "deploy/docker/wheel_server.py did not start" >&2; exit 1; }
  unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST
  set -a
  # shellcheck disable=SC1091
  . "$work/pip.env"
  set +a
  echo "==> pip sources: ${PIP_INDEX_URL:-PyPI}${PIP_EXTRA_INDEX_URL:+, $PIP_EXTRA_INDEX_URL}${PIP_FIND_LINKS:+, find-links $PIP_FIND_LINKS}"
  for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST; do
    pip_args+=(--build-arg "$name=${!name:-}")
  done
fi

build() {  # build NAME TAG DOCKERFILE CONTEXT [ARGS...]
  local name=$1 tag=$2 dockerfile=$3 context=$4
  shift 4
  echo "==> $name: $tag"
  timed "$name" "$DOCKER" build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -f "$dockerfile" -t "$tag" "$@" \
    "$context"
}

for target in "${targets[@]}"; do
  case $target in
    app) build app "$APP_IMAGE" Dockerfile . "${pip_args[@]}" ;;
    redis) build redis "$REDIS_IMAGE" deploy/docker/redis.Dockerfile deploy/docker ;;
    postgres) build postgres "$POSTGRES_IMAGE" deploy/docker/postgres.Dockerfile deploy/docker ;;
    *) echo "unknown image $target (app, redis, postgres)" >&2; exit 2 ;;
  esac
done

# Images left untagged by earlier builds (an older cxr-triage:latest), once they are an hour old: bounded disk use.
$DOCKER image prune -f --filter until=1h >/dev/null || true

echo "==> took"
printf '    %s\n' "${summary[@]}"
echo "==> images"
for tag in "$BASE_IMAGE" "$APP_IMAGE" "$REDIS_IMAGE" "$POSTGRES_IMAGE"; do
  if size=$($DOCKER image inspect --format '{{.Size}}' "$tag" 2>/dev/null); then
    printf '    %-32s %6s MB\n' "$tag" "$((size / 1000000))"
  fi
done
