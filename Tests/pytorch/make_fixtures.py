#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures that PyTorchFixtureTests compares against
(run by hand, needs torch, safetensors and numpy; CI only reads the committed files).

    python Tests/pytorch/make_fixtures.py [--reference PATH] [--output DIR]

For each reference model of ../shared/reference/torch_models.py it builds the
PyTorch definition with a fixed seed, runs ONE training-mode forward and
backward on a fixed batch, and writes DIR/MODEL.safetensors holding:

  <state_dict name>        the weights and buffers before the step (F32; counters I64)
  input, labels            the batch [N, C, H, W] (F32) and its labels [N] (I64)
  logits, loss             the model's output [N, classes] and the loss [1]
  grad.<parameter name>    dL/dparameter for every parameter (see "factors" below)
  after.<buffer name>      BatchNorm running statistics and counters after the step
                           (metadata bn_momentum: the momentum of every BatchNorm)
  losses                   the loss at steps 0..LOSS_STEPS-1 of SGD (metadata sgd_lr,
                           sgd_momentum) on the same batch, dropout keyed by each step

The loss is what cnn-dist's trainer computes: mean softmax cross-entropy over
the batch with the label smoothing in the metadata (cnn-dist's default, 0.1).
BatchNorm uses batch statistics (training mode). Dropout keeps its training-mode
probability but uses cnn-dist's mask, ported below from Dropout.swift
(counterHash of seed, layer key, step, sample index and element index), so
both frameworks drop the same elements and the comparison covers dropout too.

The reference is computed in float64 from the float32 weights and input, so
the stored logits, loss and gradients carry no float32 rounding of PyTorch's
own; cnn-dist's float32 result is compared with them at 1e-4 relative.

Size: a parameter tensor with more than GENERATED_ABOVE elements (the 4096x512
and 675x512 classifier weights of minivgg and fashion-cnn) would alone make the
fixtures tens of MB. Such a weight is not stored: both sides generate it from
counterHash(key, element index) (uniform in [-bound, bound), PyTorch's default
Linear range; metadata generated.<name> = "key bound"), and its gradient is
stored as its two factors, the layer's input factor.<name>.input [N, in] and
output gradient factor.<name>.grad_output [N, out] (dW = grad_outputᵀ · input);
this script checks the factors reproduce PyTorch's gradient before writing.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import safetensors.torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_logits import DEFAULT_REFERENCE, REPO, load_reference  # noqa: E402

BATCH = 16
SEED = 1234           # torch.manual_seed: initial weights, input, labels
DROPOUT_SEED = 1      # ExecutionContext.seed for the dropout masks
STEP = 0              # ExecutionContext.step of the first step
LOSS_STEPS = 3
SGD_LR, SGD_MOMENTUM = 0.01, 0.9
LABEL_SMOOTHING = 0.1
GENERATED_ABOVE = 100_000
MASK64 = (1 << 64) - 1


# --- cnn-dist's counter hash (Sources/CnnCore/Random.swift), over numpy uint64 ---

def splitmix_mix(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def counter_mix(counter):
    with np.errstate(over="ignore"):
        return splitmix_mix(np.asarray(counter, dtype=np.uint64) + np.uint64(0x632BE59BD9B4E019))


def counter_hash(key, counter):
    with np.errstate(over="ignore"):
        return splitmix_mix(np.uint64(key) + counter_mix(counter))


def unit_floats(key, count):
    """Float32 uniforms in [0, 1) with 24 bits: Float(counterHash(key, i) >> 40) / 2^24."""
    bits = counter_hash(key, np.arange(count, dtype=np.uint64)) >> np.uint64(40)
    return bits.astype(np.float32) * np.float32(1.0 / 16_777_216.0)


def dropout_mask(p, key, seed, step, sample_offset, n, per_sample):
    """Dropout.forward's mask [n, per_sample]: 1/(1-p) (in float32) where kept, else 0."""
    step_key = int(counter_hash(int(counter_hash(seed, key)), step))
    mixed = counter_mix(np.arange(per_sample, dtype=np.uint64))
    p32 = np.float32(p)
    scale = np.float32(1) / (np.float32(1) - p32)
    mask = np.empty((n, per_sample), dtype=np.float32)
    for i in range(n):
        sample_key = np.uint64(int(counter_hash(step_key, sample_offset + i)))
        with np.errstate(over="ignore"):
            u = (splitmix_mix(sample_key + mixed) >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16_777_216.0)
        mask[i] = np.where(u >= p32, scale, np.float32(0))
    return mask


class CnnDistDropout(nn.Module):
    """nn.Dropout(p) with cnn-dist's mask for layer `key` (1, 2, ... in model order, as ModelZoo's Stack numbers them)."""

    def __init__(self, p, key):
        super().__init__()
        self.p, self.key, self.step = p, key, STEP

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        per = x[0].numel()
        mask = dropout_mask(self.p, self.key, DROPOUT_SEED, self.step, 0, x.shape[0], per)
        return x * torch.from_numpy(mask).to(x.dtype).reshape(x.shape)


def replace_dropouts(module, counter):
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            counter[0] += 1
            setattr(module, name, CnnDistDropout(child.p, counter[0]))
        else:
            replace_dropouts(child, counter)


def make_fixture(name, constructor, input_shape, classes=10, dtype=torch.float64):
    torch.manual_seed(SEED)
    model = constructor()
    dropouts = [0]
    replace_dropouts(model, dropouts)

    # Big weights: generated from the counter hash instead of stored.
    generated = {}
    modules = dict(model.named_modules())
    for pname, p in model.named_parameters():
        if p.numel() > GENERATED_ABOVE:
            owner = modules[pname.rsplit(".", 1)[0]]
            assert isinstance(owner, nn.Linear) and pname.endswith(".weight"), f"{pname}: only Linear weights are generated"
            key = 1000 + len(generated)
            bound = np.float32(1 / np.sqrt(owner.in_features))
            u = unit_floats(key, p.numel())
            values = (u * np.float32(2) - np.float32(1)) * bound
            with torch.no_grad():
                p.copy_(torch.from_numpy(values).reshape(p.shape))
            generated[pname] = (key, bound, owner)

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    x = torch.randn(BATCH, *input_shape)
    labels = torch.randint(0, classes, (BATCH,))

    # The reference in `dtype` (float64) from the float32 values.
    model = model.to(dtype).train()
    captured = {}
    for pname, (_, _, owner) in generated.items():
        def keep_input(module, args, pname=pname):
            captured[pname + ".input"] = args[0].detach().clone()

        def keep_grad_output(module, grad_input, grad_output, pname=pname):
            captured[pname + ".grad_output"] = grad_output[0].detach().clone()
        owner.register_forward_pre_hook(keep_input)
        owner.register_full_backward_hook(keep_grad_output)
    logits = model(x.to(dtype))
    loss = F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)
    model.zero_grad()
    loss.backward()

    out = {k: (v if v.dtype == torch.int64 else v.float()) for k, v in state.items()}
    out["input"] = x.float().contiguous()
    out["labels"] = labels.to(torch.int64)
    out["logits"] = logits.detach().float().contiguous()
    out["loss"] = loss.detach().float().reshape(1)
    metadata = {"model": name, "batch": str(BATCH), "label_smoothing": repr(LABEL_SMOOTHING),
                "dropout_seed": str(DROPOUT_SEED), "step": str(STEP), "torch": torch.__version__,
                "reference_precision": str(dtype).replace("torch.", ""),
                "sgd_lr": repr(SGD_LR), "sgd_momentum": repr(SGD_MOMENTUM)}
    for pname, p in model.named_parameters():
        if pname in generated:
            key, bound, _ = generated[pname]
            del out[pname]
            metadata["generated." + pname] = f"{key} {float(bound)!r}"
            gin, gout = captured[pname + ".input"], captured[pname + ".grad_output"]
            product = gout.t() @ gin
            err = (product - p.grad).abs().max() / p.grad.abs().max()
            assert err < (1e-9 if dtype == torch.float64 else 1e-5), f"{name} {pname}: factors give the gradient to {err:.2e} only"
            out[f"factor.{pname}.input"] = gin.float().contiguous()
            out[f"factor.{pname}.grad_output"] = gout.float().contiguous()
        else:
            out["grad." + pname] = p.grad.detach().float().contiguous()
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert len(momenta) <= 1, f"{name}: BatchNorm layers with different momenta {momenta}"
    if momenta:
        metadata["bn_momentum"] = repr(momenta.pop())
    for bname, b in model.named_buffers():
        out["after." + bname] = (b if b.dtype == torch.int64 else b.float()).detach().clone().contiguous()

    # A few SGD steps on the same batch: the loss before each update.
    optimizer = torch.optim.SGD(model.parameters(), lr=SGD_LR, momentum=SGD_MOMENTUM)
    losses = [loss.item()]
    for step in range(STEP + 1, STEP + LOSS_STEPS):
        optimizer.step()
        for m in model.modules():
            if isinstance(m, CnnDistDropout):
                m.step = step
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x.to(dtype)), labels, label_smoothing=LABEL_SMOOTHING)
        loss.backward()
        losses.append(loss.item())
    out["losses"] = torch.tensor(losses, dtype=torch.float32)
    return out, metadata, dropouts[0]


def relative_error(a, b, scale):
    """PyTorchFixtureTests' measure: max |a - b| / max |b|, or / scale where b is zero in exact arithmetic."""
    reference = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if reference <= 1e-12 * scale else reference)


def float32_noise(reference, tensors, metadata):
    """The worst error of PyTorch's own float32 step against the float64 reference, by the
    test's measure: how far rounding alone moves a float32 implementation on this batch."""
    gradients = {k: v for k, v in reference.items() if k.startswith("grad.")}
    scale = max(g.abs().max().item() for g in gradients.values())
    errors = {k: relative_error(tensors[k].double(), reference[k].double(), scale if k.startswith("grad.") else 0)
              for k in list(gradients) + ["logits", "loss", "losses"]}
    worst = max(errors, key=errors.get)
    return worst, errors[worst]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", default=DEFAULT_REFERENCE)
    parser.add_argument("--output", default=os.path.join(REPO, "Tests", "fixtures"))
    args = parser.parse_args()
    reference = load_reference(args.reference)
    os.makedirs(args.output, exist_ok=True)
    torch.set_num_threads(1)
    for name, (constructor, input_shape) in reference.MODELS.items():
        tensors, metadata, dropouts = make_fixture(name, constructor, input_shape)
        single, _, _ = make_fixture(name, constructor, input_shape, dtype=torch.float32)
        noise_name, noise = float32_noise(tensors, single, metadata)
        path = os.path.join(args.output, f"{name}.safetensors")
        safetensors.torch.save_file(tensors, path, metadata=metadata)
        print(f"{name}: {path} {os.path.getsize(path)} bytes, loss {tensors['loss'].item():.6f}, "
              f"{sum(k.startswith('grad.') for k in tensors)} gradients stored, "
              f"{sum(k.startswith('generated.') for k in metadata)} generated, {dropouts} dropout layers; "
              f"PyTorch float32 vs this reference: worst {noise:.2e} ({noise_name})")


if __name__ == "__main__":
    main()
