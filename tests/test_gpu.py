"""Opt-in CUDA checks: ``pytest -m gpu`` on a machine with a GPU (skipped elsewhere)."""

import pytest
import torch

from contextrast import ContextrastLoss, create_model
from contextrast import functional as CF

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_distance_transform_on_device_matches_cpu():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(8, 19, 128, 256, generator=g) < 0.97
    on_gpu = CF.distance_transform(mask.cuda())
    assert on_gpu.is_cuda
    assert torch.allclose(on_gpu.cpu(), CF.distance_transform(mask), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_under_autocast_on_cuda(dtype):
    model = create_model("hrnetv2_w18_small", num_classes=19).cuda()
    contrast = ContextrastLoss(19, model.feature_channels).cuda()
    images = torch.randn(2, 3, 128, 256, device="cuda")
    target = torch.randint(0, 19, (2, 128, 256), device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = model(images)
        loss = contrast(out.features, out.logits, target)
    loss.backward()
    assert loss.is_cuda and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in contrast.parameters() if p.grad is not None)
