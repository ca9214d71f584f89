#!/usr/bin/env python3
"""Per-pass convolution GFLOP/s of cnn-dist and of PyTorch CPU on the same layer shapes.

Runs `cnn-dist bench conv --json --thread-time` (one thread), then times PyTorch's
forward, input-gradient and weight-gradient passes (`aten.convolution_backward`) of
every layer it reported, one thread, thread CPU time, best of --repeats, and prints
both side by side. Run by hand after `swift build -c release`:

    python Tests/pytorch/conv_passes.py [--binary .build/release/cnn-dist] [--layer resnet20]
"""
import argparse
import json
import subprocess
import time

import torch


def best_seconds(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def torch_passes(layer, batch, repeats):
    c, h, w, k = layer["in_channels"], layer["height"], layer["width"], layer["out_channels"]
    ks, s, p = layer["kernel"], layer["stride"], layer["padding"]
    x = torch.randn(batch, c, h, w)
    weight = torch.randn(k, c, ks, ks)
    y = torch.nn.functional.conv2d(x, weight, stride=s, padding=p)
    dy = torch.randn_like(y)
    flops = 2.0 * layer["macs_per_sample"] * batch

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)

    with torch.no_grad():
        passes = {
            "forward": lambda: torch.nn.functional.conv2d(x, weight, stride=s, padding=p),
            "backward_data": backward([True, False, False]),
            "backward_weights": backward([False, True, False]),
        }
        return {name: flops / best_seconds(fn, repeats) * 1e-9 for name, fn in passes.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=".build/release/cnn-dist")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--layer", default=None, help="only layers whose model/layer contains this text")
    args = parser.parse_args()

    torch.set_num_threads(1)
    command = [args.binary, "bench", "conv", "--json", "--thread-time", "--batch", str(args.batch)]
    if args.layer:
        command += ["--layer", args.layer]
    ours = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)

    print(f"batch {args.batch}, 1 thread, thread CPU time; GFLOP/s = 2*MACs / time (torch {torch.__version__})")
    print(f"{'model/layer':20}{'pass':18}{'cnn-dist':>10}{'torch':>10}{'ratio':>8}")
    for layer in ours["layers"]:
        theirs = torch_passes(layer, args.batch, args.repeats)
        for name in ("forward", "backward_data", "backward_weights"):
            mine = layer[f"{name}_gflops"]
            print(f"{layer['model'] + '/' + layer['layer']:20}{name:18}{mine:10.1f}{theirs[name]:10.1f}"
                  f"{mine / theirs[name]:8.2f}")


if __name__ == "__main__":
    main()
