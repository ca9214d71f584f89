#!/usr/bin/env python3
"""Loader throughput of torchvision's ImageNet training transform on one thread,
to put beside `cnn-dist bench loader DIR` on the same files (run by hand).

    pip install torchvision pillow        # torchvision's PIL transforms; torch already installed
    .build/release/cnn-dist bench loader /tmp/jpegs --generate 500   # writes the JPEGs, then times ours
    python Tests/pytorch/loader_bench.py /tmp/jpegs

Per image, as a DataLoader worker does for ImageFolder: open and decode the file
(PIL, convert("RGB")), RandomResizedCrop(224) (scale 0.08-1, ratio 3/4-4/3, bilinear,
PIL's antialiased resize), RandomHorizontalFlip, ToTensor, Normalize(ImageNet mean/std).
torch.set_num_threads(1): one core, like `cnn-dist bench loader`. Best of --passes
timed passes after a warm-up pass. --no-torchvision does the same with PIL and torch
directly (torchvision's get_params re-implemented), for machines without torchvision.
"""
import argparse
import math
import os
import random
import sys
import time

import torch
from PIL import Image

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def pil_transform(size):
    """RandomResizedCrop + flip + ToTensor + Normalize with PIL and torch only (torchvision's algorithm)."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)

    def params(width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        area = width * height
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        for _ in range(10):
            target = area * random.uniform(*scale)
            aspect = math.exp(random.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        w, h = width, height
        if width / height < ratio[0]:
            h = int(round(w / ratio[0]))
        elif width / height > ratio[1]:
            w = int(round(h * ratio[1]))
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(image):
        top, left, h, w = params(*image.size)
        image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        tensor = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
        tensor = tensor.permute(2, 0, 1).float().div(255)
        return (tensor - mean) / std

    return apply


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder of class folders holding JPEG/PNG files (as ImageFolder reads it)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--no-torchvision", action="store_true", help="PIL + torch only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    random.seed(1)
    torch.manual_seed(1)
    if args.no_torchvision:
        files = sorted(os.path.join(root, name) for root, _, names in os.walk(args.folder) for name in names
                       if name.lower().endswith((".jpg", ".jpeg", ".png")))
        transform = pil_transform(args.size)

        def load(i):
            with open(files[i], "rb") as f:
                return transform(Image.open(f).convert("RGB"))
        count, what = len(files), "PIL + torch (torchvision's algorithm re-implemented)"
    else:
        import torchvision
        from torchvision import datasets, transforms
        dataset = datasets.ImageFolder(args.folder, transform=transforms.Compose([
            transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))

        def load(i):
            return dataset[i][0]
        count, what = len(dataset), f"torchvision {torchvision.__version__} ImageFolder + transforms (PIL)"
    import PIL
    print(f"loader_bench: {count} files in {args.folder}, {args.size}x{args.size}, one thread; {what}; "
          f"torch {torch.__version__}, Pillow {PIL.__version__}")
    best = math.inf
    for p in range(args.passes + 1):
        start = time.perf_counter()
        for i in range(count):
            out = load(i)
            assert out.shape == (3, args.size, args.size)
        elapsed = time.perf_counter() - start
        if p > 0:
            best = min(best, elapsed)
    print(f"  {count / best:.1f} images/s ({1000 * best / count:.2f} ms/image)")


if __name__ == "__main__":
    sys.exit(main())
