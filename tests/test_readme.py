import re
from pathlib import Path

import torch
import torch.nn.functional as F

README = Path(__file__).resolve().parents[1] / "README.md"


class TinyHRNetLike(torch.nn.Module):
    """Four feature maps at strides 4–32 with HRNetV2-W48 channels, and logits at stride 4."""

    def __init__(self):
        super().__init__()
        self.stems = torch.nn.ModuleList(
            torch.nn.Conv2d(3, c, 1, stride=s) for c, s in zip([48, 96, 192, 384], [4, 8, 16, 32])
        )
        self.head = torch.nn.Conv2d(48, 19, 1)

    def forward(self, images):
        features = [stem(images) for stem in self.stems]
        return features, self.head(features[0])


def test_readme_training_loop_snippet_runs():
    block = re.search(
        r"```python\n(from contextrast import ContextrastLoss.*?)```", README.read_text(), re.S
    )
    assert block, "README lost its 5-line example"
    model = TinyHRNetLike()
    images = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 19, (2, 64, 64))
    scope = {"torch": torch, "F": F, "model": model, "images": images, "target": target}
    exec(block.group(1), scope)
    loss, contrast = scope["loss"], scope["contrast"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in contrast.heads[0].parameters())
    assert len(scope["optimizer"].param_groups[0]["params"]) == len(list(model.parameters())) + len(
        list(contrast.parameters())
    )


def test_readme_feature_tap_snippets_run():
    """The smp and torchvision snippets, as written, on a small batch."""
    blocks = re.findall(
        r"```python\n((?:import segmentation_models_pytorch|from torchvision).*?)```",
        README.read_text(),
        re.S,
    )
    assert len(blocks) == 2, "README lost a FeatureTap example"
    g = torch.Generator().manual_seed(0)
    for block in blocks:
        images = torch.randn(2, 3, 64, 64, generator=g)
        target = torch.randint(0, 19, (2, 64, 64), generator=g)
        scope = {"torch": torch, "F": F, "images": images, "target": target}
        exec(block, scope)
        loss = scope["loss"]
        assert torch.isfinite(loss) and loss.item() > 0
        loss.backward()
        assert all(p.grad is not None for p in scope["contrast"].heads[0].parameters())


def test_the_smp_example_trains_and_evaluates():
    import importlib.util

    path = README.parent / "examples" / "smp_unet_digits.py"
    spec = importlib.util.spec_from_file_location("smp_unet_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--iters", "2", "--batch", "2", "--val-images", "2"])
    assert result["contrast"] > 0 and 0 <= result["miou"] <= 100


def test_readme_region_loss_snippet_runs_on_the_upsampled_logits():
    block = re.search(
        r"```python\n(from contextrast.contrast import RegionLoss.*?)```", README.read_text(), re.S
    )
    assert block, "README lost its region-loss example"
    up = torch.randn(2, 19, 16, 16, requires_grad=True)
    target = torch.randint(0, 19, (2, 16, 16))
    scope = {"torch": torch, "F": F, "up": up, "target": target}
    exec(block.group(1), scope)
    ce = F.cross_entropy(up, target, ignore_index=255)
    assert scope["loss"].item() > ce.item()  # the Lovász term is positive on random logits
    scope["loss"].backward()
    assert up.grad is not None and torch.isfinite(up.grad).all()
