#!/usr/bin/env bash
# Build localhost/debian-python:bookworm, a small Debian bookworm with python3 (3.11) and
# nothing else, from Debian's own packages with debootstrap: the image `make image` builds
# FROM on a machine that cannot pull python:3.11-slim (docs/decisions/0021).
#
#   deploy/image/base-image.sh [--force] [IMAGE]
#
# Skips the build when IMAGE exists already (--force: rebuild it). Needs root, debootstrap
# and podman (or docker: CONTAINER_ENGINE). MIRROR overrides the Debian mirror.
set -euo pipefail

force=0
if [[ ${1:-} == --force ]]; then
  force=1
  shift
fi
image=${1:-localhost/debian-python:bookworm}
engine=${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}
mirror=${MIRROR:-http://deb.debian.org/debian}
[[ -n $engine ]] || { echo "base-image: neither podman nor docker is installed" >&2; exit 1; }

if ((!force)) && "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "base-image: $image exists (--force to rebuild it)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "base-image: debootstrap is not installed" >&2; exit 1; }

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/debian-python.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
started=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# Trim what a container never reads: package lists and caches, docs, man pages, locales
# other than C, bytecode (the image compiles its own venv's), logs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/lintian "$rootfs"/usr/share/linda "$rootfs"/var/log/* "$rootfs"/tmp/*
find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
find "$rootfs" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
# dpkg must not put them back if someone apt-get installs into a derived image.
mkdir -p "$rootfs"/etc/dpkg/dpkg.cfg.d
cat >"$rootfs"/etc/dpkg/dpkg.cfg.d/01-slim <<'CFG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG

tar -C "$rootfs" --numeric-owner -c . | "$engine" import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/usr/bin/python3"]' - "$image" >/dev/null
echo "base-image: built $image in $((SECONDS - started)) s: $("$engine" image inspect --format '{{.Size}}' "$image") bytes"
