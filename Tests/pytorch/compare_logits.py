#!/usr/bin/env python3
"""PyTorch interop for cnn-dist checkpoints, run by hand (needs torch, safetensors, numpy).

compare: load a cnn-dist checkpoint into the PyTorch reference definition with
    model.load_state_dict(safetensors.torch.load_file(path), strict=True),
    run a test set normalised with the checkpoint's metadata statistics, and
    compare the logits with `cnn-dist predict` (max |diff| must be < --tolerance).

    python Tests/pytorch/compare_logits.py compare --checkpoint /tmp/ckpt-run/model.safetensors
    python Tests/pytorch/compare_logits.py compare --checkpoint r.safetensors --model resnet20 \
        --images test_batch.bin

export: save a PyTorch-initialised state_dict (optionally with BatchNorm running
    statistics from a few train-mode forward passes, optionally in another
    dtype) with cnn-dist metadata, so that `cnn-dist predict` / loadModelCheckpoint
    can load it; then `compare` checks the two frameworks agree on it.

    python Tests/pytorch/compare_logits.py export --model fashion-cnn --output /tmp/torch-init.safetensors

The reference definitions are imported from --reference (default
../shared/reference/torch_models.py relative to the repository root); nothing
is copied from them.
"""
import argparse
import gzip
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import safetensors.torch
from safetensors import safe_open

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def default_reference():
    """../shared/reference/torch_models.py next to the repository; from a git
    worktree elsewhere, next to the main checkout."""
    candidates = [REPO]
    try:
        common = subprocess.run(["git", "-C", REPO, "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, check=True).stdout.strip()
        candidates.append(os.path.dirname(common))
    except (OSError, subprocess.CalledProcessError):
        pass
    paths = [os.path.normpath(os.path.join(c, "..", "shared", "reference", "torch_models.py")) for c in candidates]
    return next((p for p in paths if os.path.exists(p)), paths[0])


DEFAULT_REFERENCE = default_reference()
FASHION = "/usr/share/datasets/fashion-mnist"


def load_reference(path):
    """The reference module imported from its file."""
    spec = importlib.util.spec_from_file_location("torch_models", path)
    if spec is None or not os.path.exists(path):
        sys.exit(f"error: reference definitions not found at {path} (pass --reference)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_images(path):
    """uint8 array [N, C, H, W] from an IDX images file (0x803 / 0x804) or CIFAR-10 binary."""
    data = read_bytes(path)
    if len(data) >= 4 and data[:3] == b"\x00\x00\x08" and data[3] in (3, 4):
        rank = data[3]
        dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
        shape = [dims[0], 1, dims[1], dims[2]] if rank == 3 else dims
        pixels = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
        if pixels.size != np.prod(shape):
            sys.exit(f"error: {path}: expected {np.prod(shape)} pixel bytes for {shape}, found {pixels.size}")
        return pixels.reshape(shape), None
    record = 1 + 3 * 32 * 32
    if len(data) == 0 or len(data) % record:
        sys.exit(f"error: {path}: neither IDX images nor CIFAR-10 binary ({len(data)} bytes)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def read_labels(path):
    data = read_bytes(path)
    if data[:4] != b"\x00\x00\x08\x01":
        sys.exit(f"error: {path}: not an IDX labels file")
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def normalise(pixels, mean, std):
    # As cnn-dist: Float((Double(p) / 255 - mean[c]) / std[c]), computed in float64, rounded once.
    x = pixels.astype(np.float64) / 255.0
    x = (x - np.array(mean).reshape(1, -1, 1, 1)) / np.array(std).reshape(1, -1, 1, 1)
    return torch.from_numpy(x.astype(np.float32))


def torch_logits(model, x, batch=500):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(model(x[i:i + batch]))
    return torch.cat(out).numpy()


def cmd_compare(a):
    ref = load_reference(a.reference)
    with safe_open(a.checkpoint, framework="pt") as f:
        metadata = f.metadata() or {}
    name = a.model or metadata.get("model")
    if name not in ref.MODELS:
        sys.exit(f"error: model {name!r} is not in {a.reference} ({', '.join(ref.MODELS)})")
    make, shape = ref.MODELS[name]
    model = make()
    state = safetensors.torch.load_file(a.checkpoint)
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    mean = [float(v) for v in metadata["normalization_mean"].split(",")]
    std = [float(v) for v in metadata["normalization_std"].split(",")]

    images_path = a.images or os.path.join(FASHION, "t10k-images-idx3-ubyte.gz")
    labels_path = a.labels or (os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz") if a.images is None else None)
    pixels, labels = read_images(images_path)
    if labels_path:
        labels = read_labels(labels_path)
    if a.limit:
        pixels = pixels[:a.limit]
        labels = labels[:a.limit] if labels is not None else None
    if tuple(pixels.shape[1:]) != tuple(shape):
        sys.exit(f"error: {images_path} holds {pixels.shape[1:]} images, {name} takes {shape}")
    images_for_predict = images_path
    tmp = tempfile.mkdtemp(prefix="compare-logits-")
    if a.limit:
        # cnn-dist predict reads whole files: write the first N images as IDX.
        images_for_predict = os.path.join(tmp, "images.idx")
        n, c, h, w = pixels.shape
        header = bytes([0, 0, 8, 3 if c == 1 else 4]) + b"".join(
            d.to_bytes(4, "big") for d in ([n, h, w] if c == 1 else [n, c, h, w]))
        with open(images_for_predict, "wb") as f:
            f.write(header + pixels.tobytes())

    predictions = a.predictions
    if predictions is None:
        predictions = os.path.join(tmp, "predictions.safetensors")
        cmd = [a.cnn_dist, "predict", "--checkpoint", a.checkpoint, "--input", images_for_predict, "--output", predictions]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    ours = safetensors.torch.load_file(predictions)
    theirs = torch_logits(model, normalise(pixels, mean, std))
    logits = ours["logits"].numpy()
    if logits.shape != theirs.shape:
        sys.exit(f"error: cnn-dist logits {logits.shape} vs PyTorch {theirs.shape}")
    diff = float(np.abs(logits - theirs).max())
    result = {
        "checkpoint": a.checkpoint, "model": name, "images": images_path, "count": int(pixels.shape[0]),
        "max_abs_logit_diff": diff, "max_abs_logit": float(np.abs(theirs).max()),
        "prediction_agreement": float((ours["predictions"].numpy() == theirs.argmax(1)).mean()),
        "torch": torch.__version__, "pass": diff < a.tolerance,
    }
    if labels is not None:
        result["torch_accuracy"] = float((theirs.argmax(1) == labels).mean())
        result["cnn_dist_accuracy"] = float((ours["predictions"].numpy() == labels).mean())
    print(json.dumps(result))
    return 0 if result["pass"] else 1


def cmd_export(a):
    ref = load_reference(a.reference)
    make, shape = ref.MODELS[a.model]
    torch.manual_seed(a.seed)
    model = make()
    if a.warmup_batches:
        # A few train-mode passes on random inputs give BatchNorm non-trivial
        # running statistics and counters, so loading them is tested too.
        model.train()
        with torch.no_grad():
            for _ in range(a.warmup_batches):
                model(torch.randn(16, *shape) * 1.5 + 0.3)
    dtype = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}[a.dtype]
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    channels = shape[0]
    metadata = {
        "model": a.model, "input": "x".join(map(str, shape)), "classes": "10", "step": "0", "format": "pytorch",
        "normalization_mean": ",".join([str(a.mean)] * channels), "normalization_std": ",".join([str(a.std)] * channels),
    }
    safetensors.torch.save_file(state, a.output, metadata=metadata)
    print(json.dumps({"output": a.output, "model": a.model, "dtype": a.dtype, "tensors": len(state),
                      "metadata": metadata}))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=DEFAULT_REFERENCE, help="path of torch_models.py")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="cnn-dist checkpoint in PyTorch vs cnn-dist predict")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--model", help="reference model name (default: the checkpoint's metadata)")
    c.add_argument("--images", help="IDX images or CIFAR-10 binary (default: Fashion-MNIST t10k)")
    c.add_argument("--labels", help="IDX labels for accuracy (default: Fashion-MNIST t10k with the default images)")
    c.add_argument("--limit", type=int, default=0, help="first N images only")
    c.add_argument("--predictions", help="existing `cnn-dist predict` output (default: run it)")
    c.add_argument("--cnn-dist", default=os.path.join(REPO, ".build", "release", "cnn-dist"))
    c.add_argument("--tolerance", type=float, default=1e-4)
    c.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("export", help="save a PyTorch-initialised state_dict with cnn-dist metadata")
    e.add_argument("--model", required=True)
    e.add_argument("--output", required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    e.add_argument("--warmup-batches", type=int, default=3)
    e.add_argument("--mean", type=float, default=0.2860402)
    e.add_argument("--std", type=float, default=0.3530239)
    e.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    return cmd_compare(a) if a.command == "compare" else cmd_export(a)


if __name__ == "__main__":
    sys.exit(main())
