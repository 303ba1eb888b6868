#!/usr/bin/env bash
# Make the Debian base image without any image registry: debootstrap a minimal bookworm with Python 3.11
# from a Debian mirror (the one apt already uses on this host, or DEBIAN_MIRROR), bring it up to date with
# bookworm-updates and bookworm-security, and `docker import` it.
#
#   deploy/docker/make-base-image.sh            # skip when the image exists already
#   deploy/docker/make-base-image.sh --force    # make it again
#
# Environment:
#   BASE_IMAGE              tag to make                     (default local/bookworm-python:3.11)
#   DEBIAN_MIRROR           Debian archive URL              (default: the first deb.debian.org-style URI in
#                                                            /etc/apt/sources.list*, else http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR  security archive URL            (default: ${DEBIAN_MIRROR}-security when found in apt's
#                                                            sources, else none: an air-gapped mirror without it)
#   EXTRA_CA_CERTS_DIR      *.crt files the image trusts    (default /usr/local/share/ca-certificates: the CAs added
#                                                            on this host, e.g. a TLS-inspecting proxy's, which pip
#                                                            in the builds must trust as pip on the host does; empty:
#                                                            none)
#   DOCKER                  docker CLI                      (default: docker)
# Needs root, debootstrap and a running dockerd. Prints how long each step took.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-local/bookworm-python:3.11}
DOCKER=${DOCKER:-docker}
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates

force=0
[ "${1:-}" = "--force" ] && force=1

step_started=0
step() { step_started=$(date +%s); printf '==> %s\n' "$*"; }
done_step() { printf '    %s: %ss\n' "$1" "$(( $(date +%s) - step_started ))"; }

extra_cas=()
ca_dir=${EXTRA_CA_CERTS_DIR-/usr/local/share/ca-certificates}
if [ -n "$ca_dir" ]; then
  shopt -s nullglob
  extra_cas=("$ca_dir"/*.crt)
  shopt -u nullglob
fi
# The image records which CAs it trusts: when this host's CAs change (a new proxy CA), the base is made again.
ca_sha=$(cat /dev/null "${extra_cas[@]}" | sha256sum | cut -c1-16)
if [ "$force" = 0 ] && $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  have=$($DOCKER image inspect --format '{{ index .Config.Labels "org.cxr-triage.extra-ca" }}' "$BASE_IMAGE")
  if [ "$have" = "$ca_sha" ]; then
    echo "base image $BASE_IMAGE exists (make it again with --force)"
    exit 0
  fi
  echo "base image $BASE_IMAGE trusts other CAs than this host adds ($have, now $ca_sha): making it again"
fi
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

# The mirror apt already uses (deb822 "URIs:" or one-line "deb URI suite ..."), so no other host is contacted.
apt_uris() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -n -E 's/^URIs:[[:space:]]*//p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+.*/\2/p' \
    | tr ' ' '\n' | sed '/^$/d'
}
if [ -z "${DEBIAN_MIRROR:-}" ]; then
  DEBIAN_MIRROR=$(apt_uris | grep -E '/debian/?$' | head -n1 || true)
  DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi
DEBIAN_MIRROR=${DEBIAN_MIRROR%/}
if [ -z "${DEBIAN_SECURITY_MIRROR+x}" ]; then
  DEBIAN_SECURITY_MIRROR=$(apt_uris | grep -E '/debian-security/?$' | head -n1 || true)
fi
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR%/}

work=$(mktemp -d /var/tmp/cxr-base.XXXXXX)
rootfs=$work/rootfs
cleanup() {
  # Never follow a mount out of the rootfs; none is made, but be sure before removing.
  if ! grep -q " $rootfs" /proc/mounts; then rm -rf "$work"; fi
}
trap cleanup EXIT
total_started=$(date +%s)

step "debootstrap --variant=minbase --include=$PACKAGES $SUITE from $DEBIAN_MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
done_step debootstrap

step "apt sources (bookworm, bookworm-updates${DEBIAN_SECURITY_MIRROR:+, bookworm-security}) and upgrade"
{
  echo "deb $DEBIAN_MIRROR $SUITE main"
  echo "deb $DEBIAN_MIRROR $SUITE-updates main"
  [ -n "$DEBIAN_SECURITY_MIRROR" ] && echo "deb $DEBIAN_SECURITY_MIRROR $SUITE-security main"
} >"$rootfs/etc/apt/sources.list"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
  'apt-get update -qq && apt-get upgrade -y -qq >/dev/null && apt-get clean' >"$work/upgrade.log" 2>&1 \
  || { tail -n 30 "$work/upgrade.log" >&2; exit 1; }
# What a container does not need: package caches and lists (apt-get update brings the lists back), resolv.conf
# (docker provides one), machine identity.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
       "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/machine-id"
done_step upgrade

if [ ${#extra_cas[@]} -gt 0 ]; then
  step "trust this host's added CAs: ${extra_cas[*]##*/}"
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  cp "${extra_cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >"$work/ca.log" 2>&1 || { cat "$work/ca.log" >&2; exit 1; }
  done_step ca-certificates
fi

step "docker import as $BASE_IMAGE"
python_version=$(chroot "$rootfs" python3 -c 'import platform; print(platform.python_version())')
tar --numeric-owner -C "$rootfs" -c . | $DOCKER import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --change "LABEL org.cxr-triage.extra-ca=$ca_sha" \
  --message "debootstrap minbase $SUITE + $PACKAGES from $DEBIAN_MIRROR (Python $python_version)" \
  - "$BASE_IMAGE" >/dev/null
done_step import

size=$($DOCKER image inspect --format '{{.Size}}' "$BASE_IMAGE")
echo "$BASE_IMAGE: Python $python_version, $((size / 1000000)) MB, made in $(( $(date +%s) - total_started ))s"
