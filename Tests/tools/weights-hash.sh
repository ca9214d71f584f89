#!/usr/bin/env bash
# Prints the SHA-256 of the weights after 30 steps of each reference model,
# on 1 rank and on --local-ranks 2 (fixed seed): run with the binaries before
# and after a refactor; the lines must be identical. PRECISION=bf16 trains in bf16
# (then the same CPU kernel, native or portable, on both sides).
#   Tests/tools/weights-hash.sh .build/release/cnn-dist
set -euo pipefail
bin="$1"; out="${TMPDIR:-/tmp}/weights-hash.$$"; mkdir -p "$out"
for model in lenet5 fashion-cnn minivgg resnet20; do
    # The recipe is pinned (the schedule's length and the crop change the 30 steps),
    # so the hashes stay comparable when the default recipe changes.
    recipe='epochs: 40\ncrop_padding: 2\nflip: true\n'
    case "$model" in
        minivgg|resnet20) printf "${recipe}dataset: synthetic\ninput: 3x32x32\nsynthetic_count: 4096\n" ;;
        *) printf "${recipe}dataset: fashion-mnist\ndata: /usr/share/datasets/fashion-mnist\n" ;;
    esac >"$out/recipe.yaml"
    data=(--config "$out/recipe.yaml")
    for ranks in 1 2; do
        dir="$out/$model-$ranks"
        "$bin" train --model "$model" "${data[@]}" --max-steps 30 --batch-size 64 --seed 7 \
            --test-limit 256 --threads 1 --local-ranks "$ranks" --precision "${PRECISION:-fp32}" --run-dir "$dir" >/dev/null 2>&1 \
            || { echo "$model ranks=$ranks: train failed" >&2; exit 1; }
        echo "$model ranks=$ranks $(sha256sum "$dir/model.safetensors" | cut -c1-16)"
    done
done
rm -rf "$out"
