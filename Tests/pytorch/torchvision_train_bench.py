#!/usr/bin/env python3
"""PyTorch CPU training throughput of torchvision's ImageNet-class models (run by hand).

Usage (torchvision need not be pip-installed; point PYTHONPATH at an unpacked wheel):
  PYTHONPATH=/tmp/tvpkg python Tests/pytorch/torchvision_train_bench.py --model resnet18 --threads 2
  PYTHONPATH=/tmp/tvpkg torchrun --nproc_per_node 2 Tests/pytorch/torchvision_train_bench.py --threads 1 --ddp
  bf16 autocast: python Tests/pytorch/torch_autocast_bench.py Tests/pytorch/torchvision_train_bench.py ...
Trains torchvision's definition (googlenet without auxiliary heads, as ours) on random
3x224x224 images and random labels of 1000 classes, SGD with momentum 0.9 and weight
decay 5e-4, fp32, batch 16 per process by default. Prints one line: model, threads, batch,
images/s of all processes (median of 3 timing windows of --steps steps each, after --warmup
untimed steps). --ddp: DistributedDataParallel over gloo (BatchNorm stays local: PyTorch's
SyncBatchNorm refuses CPU modules).
Peak resident memory is measured outside, by `/usr/bin/time -f %M` (launch/bench-224.sh).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(),
    "resnet50": lambda: torchvision.models.resnet50(),
    "vgg11": lambda: torchvision.models.vgg11(),
    "vgg16": lambda: torchvision.models.vgg16(),
    "googlenet": lambda: torchvision.models.googlenet(aux_logits=False, init_weights=True),
    "densenet121": lambda: torchvision.models.densenet121(),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5, help="steps per timing window (3 windows)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--ddp", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = MODELS[a.model]()
    model.train()
    world, rank = 1, 0
    if a.ddp:
        import torch.distributed as dist
        dist.init_process_group("gloo")
        world, rank = dist.get_world_size(), dist.get_rank()
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, 224, 224)
    y = torch.randint(0, 1000, (a.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        rates.append(a.steps * a.batch * world / (time.perf_counter() - t0))
    if rank == 0:
        params = sum(p.numel() for p in model.parameters())
        print(f"{a.model} params={params} processes={world} threads={a.threads} batch/process={a.batch} "
              f"images/s={statistics.median(rates):.2f}")


if __name__ == "__main__":
    main()
