#!/usr/bin/env python3
"""Runs a PyTorch benchmark script under torch.autocast("cpu", dtype=torch.bfloat16).

  python Tests/pytorch/torch_autocast_bench.py ../shared/bench/torch_ref_bench.py --model resnet20 --threads 2
  torchrun --nproc_per_node 2 Tests/pytorch/torch_autocast_bench.py ../shared/bench/torch_ref_bench.py --ddp ...

The whole script runs inside the autocast region, so each training step's forward does (its
convolutions and linear layers in bf16, with fp32 weights); the backward mirrors the forward's
casts, and the optimizer's ops are not autocast ops, so they stay fp32 (PyTorch's documented
CPU bf16 mixed precision).
"""
import runpy
import sys

import torch

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runpy.run_path(script, run_name="__main__")
