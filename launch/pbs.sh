#!/usr/bin/env bash
# PBS / Torque job: qsub launch/pbs.sh   (arguments through: qsub -v ARGS="--epochs 5" launch/pbs.sh)
#PBS -N cnn-dist
#PBS -l select=2:ncpus=2:mpiprocs=2
#PBS -l walltime=02:00:00
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
binary="${CNN_DIST_BINARY:-.build/release/cnn-dist}"
ranks=$(wc -l < "$PBS_NODEFILE")
# shellcheck disable=SC2086
mpirun -n "$ranks" --hostfile "$PBS_NODEFILE" --bind-to core "$binary" train --run-dir "runs/pbs-${PBS_JOBID%%.*}" ${ARGS:-}
