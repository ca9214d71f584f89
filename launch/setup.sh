#!/usr/bin/env bash
# Sets a fresh Debian machine up for cnn-dist and runs a job.
#   launch/setup.sh install   apt packages only
#   launch/setup.sh build     install + release build
#   launch/setup.sh test      install + build + the whole test suite (what CI runs)
#   launch/setup.sh train ... install + build + `cnn-dist train ...`
# CNN_DIST_MPI=mpich selects MPICH instead of Open MPI: its packages, a build in
# .build-mpich, and mpirun.mpich for the MPI tests (Open MPI stays the default).
set -euo pipefail
cd "$(dirname "$0")/.."

mpi="${CNN_DIST_MPI:-openmpi}"
packages=(pkg-config zlib1g-dev libpng-dev libturbojpeg0-dev libopenblas-dev dataset-fashion-mnist iproute2)
scratch=.build
case "$mpi" in
    openmpi) packages+=(libopenmpi-dev openmpi-bin) ;;
    mpich) packages+=(libmpich-dev mpich); scratch=.build-mpich
           export CNN_DIST_MPI CNN_DIST_MPIRUN="${CNN_DIST_MPIRUN:-mpirun.mpich}" ;;
    *) echo "setup: CNN_DIST_MPI=$mpi is not supported; use openmpi (default) or mpich" >&2; exit 2 ;;
esac

install_packages() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "setup: installing ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build() {
    swift build -c release --scratch-path "$scratch"
}

cmd="${1:-test}"
shift || true
case "$cmd" in
    install) install_packages ;;
    build) install_packages; build ;;
    test)
        install_packages
        build
        # mpirun inside the MPI tests: allow root (CI runs as root) and more ranks than cores.
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
        swift test -c release --scratch-path "$scratch" "$@"
        ;;
    train) install_packages; build; exec "$scratch"/release/cnn-dist train "$@" ;;
    *) echo "usage: launch/setup.sh install|build|test|train [args]" >&2; exit 2 ;;
esac
