#!/bin/sh
# Installs what building and testing lowbit needs on Debian 12 (bookworm).  Runs apt-get through sudo when
# not root.  Set LOWBIT_DEPS_GPU=0 to skip the HIP toolchain (the CUDA toolkit is never installed here:
# use NVIDIA's packages, then configure finds nvcc on PATH or in /usr/local/cuda).  debhelper, dpkg-dev,
# fakeroot, lintian and man-db are for the Debian packages (scripts/deb-test.sh).
set -eu
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs="build-essential autoconf automake autoconf-archive libtool pkg-config check
      ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo libclblast-dev libopenblas-dev libjansson-dev
      debhelper dpkg-dev fakeroot lintian man-db"
[ "${LOWBIT_DEPS_GPU:-1}" = 0 ] || pkgs="$pkgs hipcc libamdhip64-dev"
missing=
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "deps-debian: installing$missing"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
  echo "deps-debian: all packages present"
fi
