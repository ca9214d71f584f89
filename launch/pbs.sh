#!/usr/bin/env bash
# PBS / Torque job: qsub launch/pbs.sh   (arguments through: qsub -v ARGS="--epochs 5" launch/pbs.sh)
#PBS -N cnn-dist
#PBS -l select=2:ncpus=2:mpiprocs=2:ompthreads=1
#PBS -l walltime=02:00:00
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
binary="${CNN_DIST_BINARY:-.build/release/cnn-dist}"
ranks=$(wc -l < "$PBS_NODEFILE")
# shellcheck disable=SC2086
# Hybrid MPI + threads: set mpiprocs=1:ompthreads=N above; OMP_NUM_THREADS carries N here.
# qdel sends SIGTERM to the job's processes: the ranks finish the step and checkpoint (exit 75;
# resume with `train --resume runs/pbs-JOB`). mpirun passes its own SIGTERM on and SIGKILLs after
# odls_base_sigkill_timeout seconds: 30 leaves the ranks time to write the checkpoint.
mpirun --mca odls_base_sigkill_timeout 30 -n "$ranks" --hostfile "$PBS_NODEFILE" --map-by "slot:PE=${OMP_NUM_THREADS:-1}" --bind-to core \
    "$binary" train --threads "${OMP_NUM_THREADS:-1}" --run-dir "runs/pbs-${PBS_JOBID%%.*}" ${ARGS:-}
