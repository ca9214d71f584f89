#!/usr/bin/env bash
# Fashion-MNIST as a user's own images: writes the IDX files as a PNG folder
# (lossless, the same pixels) and that folder as JPEG shards (quality 95), then,
# with "train", trains the default recipe (configs/fashion-cnn.yaml) on the IDX
# files, the PNG folder and the shards with the same seed and epochs, and prints
# each run's final test accuracy side by side.
#   Tests/tools/fashion-mnist-images.sh .build/release/cnn-dist OUT            # write the data only
#   Tests/tools/fashion-mnist-images.sh .build/release/cnn-dist OUT train [EPOCHS] [RANKS]
# What may differ between the three runs: the folder lists the images by class
# (the epoch permutation is over another index order); the shards hold JPEGs (lossy),
# are read through a shuffle buffer, drop up to a batch per rank and epoch more, and
# normalise with the statistics of the JPEG pixels (see Sources/CnnData/ShardDataset.swift).
set -euo pipefail
bin="$1"; out="$2"; mode="${3:-data}"; epochs="${4:-40}"; ranks="${5:-1}"
idx=/usr/share/datasets/fashion-mnist
[ -d "$out/png/train" ] || "$bin" export fashion-mnist "$out/png" --data "$idx"
[ -f "$out/shards/manifest.tsv" ] || "$bin" pack "$out/png" "$out/shards" --shard-size 10000 --recode jpeg --quality 95
[ "$mode" = train ] || exit 0
config="$(dirname "$0")/../../configs/fashion-cnn.yaml"
for kind in idx folder shards; do
    case "$kind" in
        idx) data=(--dataset fashion-mnist --data "$idx") ;;
        folder) data=(--dataset folder --data "$out/png" --input 1x28x28) ;;
        shards) data=(--dataset shards --data "$out/shards" --input 1x28x28) ;;
    esac
    "$bin" train --config "$config" "${data[@]}" --epochs "$epochs" --seed 1 --local-ranks "$ranks" \
        --run-dir "$out/run-$kind" >"$out/run-$kind.log" 2>&1 || { echo "$kind: train failed, see $out/run-$kind.log" >&2; exit 1; }
    python3 -c 'import json,sys; ms=[json.loads(l) for l in open(sys.argv[1])]; print("%-7s epochs %d  test accuracy %.4f  training %.0fs" % (sys.argv[2], ms[-1]["epoch"], ms[-1]["test_accuracy"], sum(m["seconds"] for m in ms)))' \
        "$out/run-$kind/metrics.jsonl" "$kind"
done
