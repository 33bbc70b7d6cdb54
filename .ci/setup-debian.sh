#!/usr/bin/env bash
# A Debian image for the tests (MPI, registry round trip): the host's release, --variant=minbase,
# plus the runtime libraries of the same OpenMPI and MPICH as the host, made offline-style with
# debootstrap from the mirror apt uses, packed as a gzip'd tarball (no top-level directory,
# /dev empty) under /var/tmp, readable by all. Runs as root. Exports
# CH_TEST_DEBIAN_IMAGE=TARBALL through $CH_TEST_ENV_FILE.
#
# Cache: a tarball made by this same script (by content: a clean clone's files are always newer
# than any cache) for the same host package versions is reused (CI machines may keep /var/tmp).
# Set CH_DEBIAN_MIRROR to use another mirror.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

out_dir=/var/tmp/ch-test
tarball=$out_dir/debian-mpi.tar.gz
# Runtime libraries only: what a program built with mpicc.openmpi or mpicc.mpich needs (libpmix2,
# libhwloc15 and friends come as their dependencies), and OpenMPI's help texts (openmpi-common),
# without which its errors say only "Sorry! You were supposed to get help about: ...".
packages=libopenmpi3,openmpi-common,libmpich12
# The image must carry the same MPI as the host.
mpi_versions() { { dpkg-query -W -f '${Package} ${Version}\n' libopenmpi3 libmpich12 libpmix2 2>/dev/null || true; } | sort; }

. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
mirror=${CH_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
  # deb822 sources (Debian 12's default), then one-line ones; the main archive, not security.
  mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v -e security -e '^$' | grep '/debian/\?$' | head -1 || true)
fi
if [[ -z $mirror ]]; then
  mirror=$(awk -v s="$suite" '$1 == "deb" && $3 == s { print $2; exit }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

host_mpi=$(mpi_versions)
[[ $(grep -c '^[^ ]\+ [^ ]\+$' <<<"$host_mpi") == 3 ]] || {
  echo "setup-debian: the host lacks libopenmpi3, libmpich12 or libpmix2 (install openmpi-bin and mpich first)" >&2
  exit 1
}

stamp="$(sha256sum <"$0" | cut -d' ' -f1) $packages
$host_mpi"
if [[ -f $tarball && -f $tarball.stamp && "$(cat "$tarball.stamp")" == "$stamp" ]]; then
  echo "setup-debian: reusing $tarball"
else
  start=$(date +%s)
  mkdir -p "$out_dir"
  chmod 755 "$out_dir"
  work=$(mktemp -d /var/tmp/ch-debootstrap.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  echo "setup-debian: debootstrap $suite from $mirror with $packages"
  if ! debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" >"$work/log" 2>&1; then
    tail -30 "$work/log" >&2
    [[ -f $work/root/debootstrap/debootstrap.log ]] && tail -30 "$work/root/debootstrap/debootstrap.log" >&2
    exit 1
  fi
  # Same versions as the host, else MPI across the container boundary is not what we test.
  image_mpi=$(chroot "$work/root" dpkg-query -W -f '${Package} ${Version}\n' libopenmpi3 libmpich12 libpmix2 | sort)
  if [[ $image_mpi != "$host_mpi" ]]; then
    printf 'setup-debian: MPI versions differ\nhost:\n%s\nimage:\n%s\n' "$host_mpi" "$image_mpi" >&2
    exit 1
  fi
  # Smaller, and nothing a user namespace can't unpack.
  rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/* "$work"/root/dev/*
  tar -C "$work/root" --numeric-owner -czf "$work/image.tar.gz" .
  rm -f "$tarball.stamp"
  mv "$work/image.tar.gz" "$tarball"
  echo "$stamp" >"$tarball.stamp"
  echo "setup-debian: made $tarball ($(du -h "$tarball" | cut -f1)) in $(($(date +%s) - start)) s"
fi
chmod 644 "$tarball" "$tarball.stamp"

if [[ -n ${CH_TEST_ENV_FILE:-} ]]; then
  echo "CH_TEST_DEBIAN_IMAGE=$tarball" >>"$CH_TEST_ENV_FILE"
fi
