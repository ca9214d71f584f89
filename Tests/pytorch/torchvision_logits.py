#!/usr/bin/env python3
"""torchvision's own definitions against our model files, run by hand.

For resnet50, vgg19, densenet121 and googlenet (aux_logits=False, transform_input=False;
and googlenet_aux, the same with aux_logits=True, whose eval logits ignore the heads)
this builds torchvision's model with random weights (fixed seed; BatchNorm affine
parameters and running statistics randomised too, so they matter), puts it in eval mode,
and writes to --out (default /tmp/torchvision-logits, never into the repository):

    NAME.safetensors     the state_dict (float32; num_batches_tracked int64)
    NAME-io.safetensors  "input" (a fixed N x 3 x 224 x 224 batch) and "logits" (torchvision's);
                         for googlenet_aux also each head's logits in eval mode ("aux1_logits", "aux2_logits")

Our side loads each state_dict strictly into the matching model file and compares logits:

    CNN_DIST_TORCHVISION_DIR=/tmp/torchvision-logits swift test -c release \
        --filter TorchvisionLogitsTests

which prints max |ours - torchvision| / max |torchvision| per model (goal <= 1e-4).

torchvision must match the installed torch; where no matching wheel exists, the model
definitions of the nearest release work (they are plain Python):
    pip install --no-deps --target /tmp/tvpkg torchvision==0.29.2
    PYTHONPATH=/tmp/tvpkg python Tests/pytorch/torchvision_logits.py
"""
import argparse
import os

import torch
import safetensors.torch
import torchvision

# torchvision name -> our model (a zoo name or a file under configs/models/)
MODELS = {
    "resnet50": "configs/models/resnet50.yaml",
    "vgg19": "configs/models/vgg19.yaml",
    "densenet121": "configs/models/densenet121-torchvision.yaml",
    "googlenet": "googlenet",
    # aux_logits=True: the heads' weights load strictly into googlenet-aux.yaml; eval ignores them.
    "googlenet_aux": "configs/models/googlenet-aux.yaml",
}


def build(name):
    if name in ("googlenet", "googlenet_aux"):
        return torchvision.models.googlenet(weights=None, aux_logits=name == "googlenet_aux", transform_input=False,
                                            init_weights=True)
    return getattr(torchvision.models, name)(weights=None)


def randomise_batchnorm(model, generator):
    """BatchNorm's defaults (scale 1, shift 0, mean 0, variance 1) would hide mistakes in eps or order."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                m.num_batches_tracked.fill_(7)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/torchvision-logits")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    for name in args.models.split(","):
        torch.manual_seed(args.seed)
        generator = torch.Generator().manual_seed(args.seed + 1)
        model = build(name)
        randomise_batchnorm(model, generator)
        model.eval()
        x = torch.randn(args.batch, 3, 224, 224, generator=generator)
        with torch.no_grad():
            logits = model(x)
            logits64 = model.double()(x.double())
        model.float()
        extra = {}
        if name == "googlenet_aux":
            # The heads in eval mode (dropout off) on the trunk's activations at 4a and 4d.
            seen = {}
            hooks = [getattr(model, f"inception4{b}").register_forward_hook(
                lambda m, i, o, b=b: seen.__setitem__(b, o)) for b in "ad"]
            with torch.no_grad():
                model(x)
                extra = {"aux1_logits": model.aux1(seen["a"]).contiguous(), "aux2_logits": model.aux2(seen["d"]).contiguous()}
            for h in hooks:
                h.remove()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, os.path.join(args.out, f"{name}.safetensors"),
                                    metadata={"torchvision_model": name, "ours": MODELS[name]})
        safetensors.torch.save_file({"input": x.contiguous(), "logits": logits.contiguous(), **extra},
                                    os.path.join(args.out, f"{name}-io.safetensors"))
        # PyTorch's own float32 error by the same measure, for scale.
        own = ((logits.double() - logits64).abs().max() / logits64.abs().max()).item()
        print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, {len(state)} tensors, "
              f"max |logit| {logits.abs().max().item():.4g}, torch float32 vs float64 {own:.2e}")


if __name__ == "__main__":
    main()
