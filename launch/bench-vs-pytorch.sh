#!/usr/bin/env bash
# Training throughput of cnn-dist and PyTorch CPU side by side, in one run
# (the machine may be shared: compare the ratios, taken minutes apart at most).
#   launch/bench-vs-pytorch.sh [MODELS...]      default: fashion-cnn minivgg resnet20
#   PRECISION=bf16 launch/bench-vs-pytorch.sh   both in bf16 mixed precision: ours with
#       --precision bf16 (needs avx512_bf16), PyTorch under torch.autocast("cpu", bfloat16)
#       (Tests/pytorch/torch_autocast_bench.py runs the reference script inside the autocast region)
# Needs: pip install torch; ../shared/bench/torch_ref_bench.py next to the checkout.
# For each model, batch 64 per rank: cnn-dist with 1 rank (1 and 2 threads) and
# with 2 and 4 MPI ranks; PyTorch with one process of 2 threads and DDP with 2
# and 4 processes of 1 thread. Peak RSS per rank from GNU time (largest process).
set -euo pipefail
cd "$(dirname "$0")/.."
torch_bench="${TORCH_BENCH:-../shared/bench/torch_ref_bench.py}"
binary="${CNN_DIST_BINARY:-.build/release/cnn-dist}"
steps="${STEPS:-20}"
precision="${PRECISION:-fp32}"
case "$precision" in
    fp32) torch=("$torch_bench") ;;
    bf16) torch=(Tests/pytorch/torch_autocast_bench.py "$torch_bench") ;;
    *) echo "PRECISION must be fp32 or bf16, got $precision" >&2; exit 2 ;;
esac
ours=(bench train --precision "$precision")
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
models=("${@:-fashion-cnn minivgg resnet20}")
# shellcheck disable=SC2068
for model in ${models[@]}; do
    echo "== $model ($precision)"
    peak() { /usr/bin/time -f "peak_rss_mib=%M" "$@" 2>&1 | sed -E 's/peak_rss_mib=([0-9]+)/echo "  peak RSS $((\1 \/ 1024)) MiB"/e'; }
    "$binary" "${ours[@]}" --model "$model" --steps "$steps" --json | sed "s/^/  ours 1x1 /"
    "$binary" "${ours[@]}" --model "$model" --steps "$steps" --threads 2 --json | sed "s/^/  ours 1x2 /"
    peak python "${torch[@]}" --model "$model" --threads 2 --steps "$steps" | sed "s/^/  torch /"
    mpirun -n 2 --bind-to core "$binary" "${ours[@]}" --model "$model" --steps "$steps" --json | sed "s/^/  ours mpi2 /"
    peak torchrun --nproc_per_node 2 "${torch[@]}" --model "$model" --threads 1 --ddp --steps "$steps" 2>&1 \
        | grep -v "^W\|OMP_NUM_THREADS\|\*\*\*\*" | sed "s/^/  torch /"
    mpirun -n 4 --oversubscribe --bind-to none "$binary" "${ours[@]}" --model "$model" --steps "$steps" --json | sed "s/^/  ours mpi4 /"
    peak torchrun --nproc_per_node 4 "${torch[@]}" --model "$model" --threads 1 --ddp --steps "$steps" 2>&1 \
        | grep -v "^W\|OMP_NUM_THREADS\|\*\*\*\*" | sed "s/^/  torch /"
done
