"""Add Contextrast to a segmentation_models_pytorch U-Net you already have: no edit to the
model, a few lines in the training loop.

    python examples/smp_unet_digits.py [--iters 200] [--batch 8]

Trains ``smp.Unet("resnet18")`` on the built-in ``digits`` scenes (real MNIST digits; needs
``pip install 'contextrast[digits]' segmentation-models-pytorch``) with cross-entropy plus
the Contextrast loss on the encoder's four deepest stages (strides 4–32), tapped by forward
hooks, and prints the loss terms and the validation mIoU. ``--encoder-weights imagenet``
fine-tunes from ImageNet weights where the machine can download them.
"""

from __future__ import annotations

import argparse

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from contextrast import ContextrastLoss, FeatureTap
from contextrast.data import Digits
from contextrast.evaluation.metrics import confusion_matrix, mean_iou


def batches(dataset, batch: int, generator: torch.Generator):
    """Endless random batches of (images (B, 3, H, W) in [0, 1], labels (B, H, W))."""
    while True:
        index = torch.randint(len(dataset), (batch,), generator=generator).tolist()
        samples = [dataset[i] for i in index]
        images = torch.stack([s.image for s in samples]).float() / 255
        yield images, torch.stack([s.label for s in samples])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--encoder-weights", default=None, help="e.g. imagenet")
    parser.add_argument("--val-images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    train, val = Digits("train", size=(96, 128)), Digits("val", size=(96, 128))
    classes = len(train.classes)

    # The model as smp builds it, and the loss on its encoder's features.
    model = smp.Unet("resnet18", encoder_weights=args.encoder_weights, classes=classes)
    tap = FeatureTap(model)  # encoder[-4] … encoder[-1]: strides 4, 8, 16, 32
    sample = next(batches(train, 2, torch.Generator().manual_seed(args.seed)))[0]
    contrast = ContextrastLoss(classes, tap.channels(sample))
    optimizer = torch.optim.AdamW([*model.parameters(), *contrast.parameters()], lr=1e-3)

    data = batches(train, args.batch, torch.Generator().manual_seed(args.seed))
    model.train()
    for step in range(1, args.iters + 1):
        images, labels = next(data)
        logits = model(images)  # (B, classes, H, W): the model's own forward
        ce = F.cross_entropy(logits, labels, ignore_index=255)
        extra = contrast(tap.features(), logits, labels)  # α · L_PA
        optimizer.zero_grad(set_to_none=True)
        (ce + extra).backward()
        optimizer.step()
        if step == 1 or step % 50 == 0 or step == args.iters:
            print(f"it {step}/{args.iters} | ce {ce.item():.4f} | contrast {extra.item():.4f}")

    # Inference is the plain model: the hooks come off, the heads stay in the loss module.
    tap.remove()
    model.eval()
    matrix = torch.zeros(classes, classes, dtype=torch.long)
    with torch.no_grad():
        for index in range(min(args.val_images, len(val))):
            sample = val[index]
            logits = model(sample.image[None].float() / 255)
            matrix += confusion_matrix(logits.argmax(1), sample.label[None], classes)
    miou = float(mean_iou(matrix).miou) * 100
    print(f"val mIoU {miou:.2f} over {min(args.val_images, len(val))} scenes")
    return {"ce": ce.item(), "contrast": extra.item(), "miou": miou}


if __name__ == "__main__":
    main()
