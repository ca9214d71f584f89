#!/usr/bin/env python3
"""Our bf16 GEMM against PyTorch's bf16 torch.matmul, one thread, side by side.

For each shape (the `cnn-dist bench gemm` defaults, or --shapes), alternating in the same
run: `cnn-dist bench gemm --precision bf16 --json --thread-time --shapes S` (our fp32 sgemm
and our bf16 GEMM: fp32 operands in memory, rounded to bf16 while packed, fp32 result),
then PyTorch on one thread:
  - torch fp32: torch.matmul on fp32 tensors;
  - torch bf16: torch.matmul on bf16 tensors (operands converted beforehand, not timed;
    the result is bf16);
  - torch autocast: torch.matmul of the fp32 tensors inside torch.autocast("cpu", bfloat16),
    so each call converts both operands to bf16 as autocast does for activations (the
    comparison closest to ours, which also reads fp32 operands).
Thread CPU time, best of --repeats; each timing loops enough calls to run >= 20 ms.
Run by hand after `swift build -c release`:

    python Tests/pytorch/gemm_bf16.py [--binary .build/release/cnn-dist] [--shapes 64x512x4096:nt,...]
"""
import argparse
import json
import math
import subprocess
import time

import torch

DEFAULT_SHAPES = [
    ("50x12544x225", "fashion conv2"), ("75x3136x450", "fashion conv3"), ("32x65536x27", "minivgg c1"),
    ("32x65536x288", "minivgg c2"), ("64x16384x288", "minivgg c3"), ("64x16384x576", "minivgg c4"),
    ("16x65536x144", "resnet20 s1"), ("32x16384x288", "resnet20 s2"), ("64x4096x576", "resnet20 s3"),
    ("64x512x4096", "linear"), ("64x512x4096:nt", "linear"), ("64x512x4096:tn", "linear"),
    ("64x512x4096:tt", "linear"), ("256x256x256", "square"), ("512x512x512", "square"),
    ("1024x1024x1024", "square"),
]


def parse(shape):
    dims, _, trans = shape.partition(":")
    m, n, k = (int(x) for x in dims.split("x"))
    trans = trans or "nn"
    if len(trans) != 2 or any(t not in "nt" for t in trans):
        raise SystemExit(f"bad transpose in {shape!r}: expected nn, nt, tn or tt")
    return m, n, k, trans[0] == "t", trans[1] == "t"


def best_gflops(fn, flops, repeats):
    fn()
    start = time.thread_time()
    fn()
    once = max(time.thread_time() - start, 1e-6)
    calls = max(1, math.ceil(0.02 / once))
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - start) / calls)
    return flops / best * 1e-9


def torch_gflops(shape, repeats):
    m, n, k, ta, tb = parse(shape)
    g = torch.Generator().manual_seed(1)
    # Stored as row-major cnn-dist operands: A is m x k (k x m when transposed), B k x n (n x k).
    a = torch.rand(k, m, generator=g) * 2 - 1 if ta else torch.rand(m, k, generator=g) * 2 - 1
    b = torch.rand(n, k, generator=g) * 2 - 1 if tb else torch.rand(k, n, generator=g) * 2 - 1
    op = lambda x, t: x.t() if t else x
    a32, b32 = op(a, ta), op(b, tb)
    a16, b16 = op(a.bfloat16(), ta), op(b.bfloat16(), tb)
    flops = 2.0 * m * n * k
    fp32 = best_gflops(lambda: torch.matmul(a32, b32), flops, repeats)
    bf16 = best_gflops(lambda: torch.matmul(a16, b16), flops, repeats)

    def autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.matmul(a32, b32)
    return fp32, bf16, best_gflops(autocast, flops, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=".build/release/cnn-dist")
    parser.add_argument("--shapes", help="comma-separated MxNxK[:TT] (default: bench gemm's 16 shapes)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = [(s, "custom") for s in args.shapes.split(",")] if args.shapes else DEFAULT_SHAPES

    print(f"torch {torch.__version__}, 1 thread, thread CPU time, best of {args.repeats}; GFLOP/s")
    header = ["shape", "name", "ours fp32", "ours bf16", "torch fp32", "torch bf16", "autocast",
              "ours/torch bf16", "ours/autocast"]
    print(f"{header[0]:<18}{header[1]:<15}" + "".join(f"{h:>11}" for h in header[2:7])
          + f"{header[7]:>17}{header[8]:>15}")
    logs = [0.0, 0.0, 0.0]
    for shape, name in shapes:
        out = subprocess.run([args.binary, "bench", "gemm", "--precision", "bf16", "--json", "--thread-time",
                              "--repeats", str(args.repeats), "--shapes", shape],
                             check=True, capture_output=True, text=True).stdout
        row = json.loads(out)["shapes"][0]
        ours32, ours16 = row["fp32_gflops"], row["bf16_gflops"]
        t32, t16, tac = torch_gflops(shape, args.repeats)
        logs[0] += math.log(ours16 / t16)
        logs[1] += math.log(ours16 / tac)
        logs[2] += math.log(ours16 / ours32)
        print(f"{shape:<18}{name:<15}" + "".join(f"{x:>11.1f}" for x in (ours32, ours16, t32, t16, tac))
              + f"{ours16 / t16:>17.2f}{ours16 / tac:>15.2f}", flush=True)
    count = len(shapes)
    print(f"geometric means over {count} shapes: ours bf16 / torch bf16 {math.exp(logs[0] / count):.3f}, "
          f"ours bf16 / torch autocast {math.exp(logs[1] / count):.3f}, ours bf16 / ours fp32 {math.exp(logs[2] / count):.3f}")


if __name__ == "__main__":
    main()
