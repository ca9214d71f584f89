#!/usr/bin/env bash
# ImageNet-class models at 3x224x224: cnn-dist and PyTorch (torchvision's definitions)
# side by side, one process each, with peak resident memory from GNU time.
#   launch/bench-224.sh [MODELS...]   default: resnet18 resnet50 vgg16 googlenet densenet121
#   BATCH=16 THREADS=2 STEPS=5 WARMUP=2 launch/bench-224.sh resnet18
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
    echo "== $model, batch $batch, $threads threads, fp32"
    peak ours "$binary" bench train --model "$(ours_model "$model")" --batch "$batch" --threads "$threads" \
        --steps "$((3 * steps))" --warmup "$warmup" --json
    peak pytorch python Tests/pytorch/torchvision_train_bench.py --model "$model" --batch "$batch" \
        --threads "$threads" --steps "$steps" --warmup "$warmup"
done
