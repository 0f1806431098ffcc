#!/usr/bin/env bash
# Makes sure the base image the Dockerfiles start FROM exists locally:
#   1. already in the local image store: nothing to do;
#   2. a registry is reachable: `docker pull debian:bookworm-slim` (what a connected user gets);
#   3. air-gapped (or no registry): builds an equivalent minimal Debian bookworm root file system
#      with debootstrap from the Debian mirror apt already uses (APT_MIRROR overrides it) and
#      imports it under the same name, so the unchanged Dockerfiles build against it.
# Needs root for debootstrap. Idempotent; about 1.5 min for step 3.
set -euo pipefail
image=${BASE_IMAGE:-debian:bookworm-slim}
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "[base-image] $image present" >&2
  exit 0
fi
if timeout 60 docker pull "$image" >/dev/null 2>&1; then
  echo "[base-image] pulled $image" >&2
  exit 0
fi
mirror=${APT_MIRROR:-}
if [ -z "$mirror" ]; then
  # The first Debian mirror apt is configured with (deb822 .sources or one-line .list files).
  mirror=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
      /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -v security | sed -E 's/^URIs:\s*//; s/^deb (\[[^]]*\] )?//; s/ .*//' | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
command -v debootstrap >/dev/null || { echo "[base-image] needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
dir=$(mktemp -d /var/tmp/bookworm-rootfs.XXXXXX)
trap 'rm -rf "$dir"' EXIT
echo "[base-image] no registry: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase bookworm "$dir" "$mirror" >/dev/null
# What the slim image trims: apt lists, docs, man pages, locales.
rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* \
  "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
tar -C "$dir" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["bash"]' - "$image" >/dev/null
echo "[base-image] imported $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)" >&2
