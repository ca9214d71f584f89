#!/usr/bin/env bash
# Local or single-node MPI run:  launch/mpirun.sh RANKS [cnn-dist arguments...]
#   launch/mpirun.sh 4 train --config configs/fashion-cnn.yaml
# Handles running as root (containers, CI) and more ranks than cores, and
# binds each rank to cores. Hybrid MPI + threads: THREADS_PER_RANK=T gives each
# rank T cores; pass the same `--threads T` to train / bench train, e.g.
#   THREADS_PER_RANK=2 launch/mpirun.sh 2 train --threads 2
set -euo pipefail
cd "$(dirname "$0")/.."
ranks="${1:?usage: launch/mpirun.sh RANKS [cnn-dist arguments...]}"
shift
binary="${CNN_DIST_BINARY:-.build/release/cnn-dist}"
[ -x "$binary" ] || swift build -c release
extra=()
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
cores=$(nproc)
threads="${THREADS_PER_RANK:-1}"
if [ $((ranks * threads)) -gt "$cores" ]; then
    extra+=(--oversubscribe --bind-to none)
elif [ "$threads" -gt 1 ]; then
    extra+=(--map-by "slot:PE=$threads" --bind-to core)
else
    extra+=(--bind-to core --map-by core)
fi
export OPENBLAS_NUM_THREADS=1
mpirun -n "$ranks" "${extra[@]}" -x OPENBLAS_NUM_THREADS "$binary" "$@" &
job=$!
# A SIGTERM to this script (kill, a batch system) becomes a SIGUSR1 to mpirun, which passes it
# to the ranks at once: they finish the step, checkpoint and exit 75 (resumable). mpirun's own
# SIGTERM handling would wait odls_base_sigkill_timeout (1 s) before signalling the ranks and
# SIGKILL them as long after, then exit 1.
trap 'kill -USR1 "$job" 2>/dev/null' TERM
# wait returns early when a trapped signal arrives: wait again until mpirun has ended.
status=0
wait "$job" || status=$?
while kill -0 "$job" 2>/dev/null; do status=0; wait "$job" || status=$?; done
exit "$status"
