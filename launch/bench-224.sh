#!/usr/bin/env bash
# ImageNet-class models at 3x224x224: cnn-dist and PyTorch (torchvision's definitions)
# side by side, one process each, with peak resident memory from GNU time.
#   launch/bench-224.sh [MODELS...]   default: resnet18 resnet50 vgg16 googlenet densenet121
#   BATCH=16 THREADS=2 STEPS=5 WARMUP=2 launch/bench-224.sh resnet18
#   RANKS=2 launch/bench-224.sh       2 processes x 1 thread: mpirun -n 2 / torchrun DDP
#   PRECISION=bf16 launch/bench-224.sh   ours --precision bf16 (needs avx512_bf16), PyTorch
#       under torch.autocast("cpu", bfloat16) (Tests/pytorch/torch_autocast_bench.py)
# BATCH is per process. Peak RSS is that of the largest process (GNU time's children maximum).
# Needs: torch, and torchvision importable (TORCHVISION_PATH is prepended to PYTHONPATH,
# default /tmp/tvpkg: an unpacked torchvision wheel is enough). Speed on a shared machine is
# noisy: compare the two columns of one run, not runs of different days. Memory is not.
# Prints one line per model and framework: images/s and peak RSS in MiB (and GiB).
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${CNN_DIST_BINARY:-.build/release/cnn-dist}"
batch="${BATCH:-16}"
threads="${THREADS:-2}"
steps="${STEPS:-5}"
warmup="${WARMUP:-2}"
ranks="${RANKS:-1}"
precision="${PRECISION:-fp32}"
case "$precision" in
    fp32) torch=(Tests/pytorch/torchvision_train_bench.py) ;;
    bf16) torch=(Tests/pytorch/torch_autocast_bench.py Tests/pytorch/torchvision_train_bench.py) ;;
    *) echo "PRECISION must be fp32 or bf16, got $precision" >&2; exit 2 ;;
esac
if [ "$ranks" -gt 1 ]; then
    [ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    ours_launch=(mpirun -n "$ranks" --bind-to core "$binary")
    torch_launch=(torchrun --nproc_per_node "$ranks")
    torch_ddp=(--ddp)
    threads=1
else
    ours_launch=("$binary")
    torch_launch=(python)
    torch_ddp=()
fi
export PYTHONPATH="${TORCHVISION_PATH:-/tmp/tvpkg}${PYTHONPATH:+:$PYTHONPATH}"
models=("${@:-resnet18 resnet50 vgg16 googlenet densenet121}")
# Our zoo has no resnet50; its model file has torchvision's layout.
ours_model() { case "$1" in resnet50) echo configs/models/resnet50.yaml ;; *) echo "$1" ;; esac; }
# peak LABEL CMD...: runs CMD under GNU time, prints LABEL, CMD's last line's images/s and the peak RSS.
peak() {
    local label="$1"; shift
    local out rss rate
    out="$(/usr/bin/time -f "peak_rss_kib=%M" "$@" 2>&1)" || { echo "$label failed:"; echo "$out" | tail -5; return 1; }
    rss="$(echo "$out" | sed -n 's/^peak_rss_kib=//p' | tail -1)"
    rate="$(echo "$out" | grep -o '"images_per_second":[0-9.]*\|images/s=[0-9.]*' | tail -1 | sed 's/.*[:=]//')"
    printf "  %-8s images/s %7.2f   peak RSS %6d MiB (%.2f GiB)\n" "$label" "$rate" $((rss / 1024)) "$(echo "$rss / 1048576" | bc -l)"
}
# shellcheck disable=SC2068
for model in ${models[@]}; do
    echo "== $model, batch $batch per process, $ranks process(es) x $threads thread(s), $precision"
    peak ours "${ours_launch[@]}" bench train --model "$(ours_model "$model")" --batch "$batch" --threads "$threads" \
        --steps "$((3 * steps))" --warmup "$warmup" --precision "$precision" --json
    peak pytorch "${torch_launch[@]}" "${torch[@]}" --model "$model" --batch "$batch" \
        --threads "$threads" --steps "$steps" --warmup "$warmup" "${torch_ddp[@]}"
done
