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


@pytest.fixture
def no_tf32():
    """True float32 arithmetic on the device: cuBLAS and cuDNN default to TF32 (10-bit
    mantissa). Restored by hand: cuBLAS's flag is no plain attribute, and monkeypatch (pytest
    9.2) undoes a patch of it by deleting it, which raises in the teardown."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("hard_negatives", ["only", "include"])
def test_contextrast_loss_on_cuda_matches_cpu(hard_negatives, no_tf32):
    # Same weights, same inputs: the device path (BANE included) must give the CPU's value and
    # gradients. Every random draw is off, since the two devices' generators give different
    # draws: max_pixels=None (no pixel subsampling) and max_positives=max_negatives=None (the
    # per-anchor sampling of positives and negatives is on by default, 1024 each).
    # TF32 off (no_tf32): compare true float32 arithmetic.
    torch.manual_seed(0)
    channels = (8, 16, 32, 64)
    features = [torch.randn(2, c, 32 // 2**i, 48 // 2**i) for i, c in enumerate(channels)]
    coarse = torch.randint(0, 5, (2, 1, 8, 12)).float()
    target = torch.nn.functional.interpolate(coarse, size=(64, 96), mode="nearest")[:, 0].long()
    target[:, :4] = 255
    logits = torch.randn(2, 5, 64, 96)
    options = dict(
        embed_dim=16,
        hard_negatives=hard_negatives,
        max_pixels=None,
        max_positives=None,
        max_negatives=None,
    )
    cpu_loss = ContextrastLoss(5, channels, **options)
    gpu_loss = ContextrastLoss(5, channels, **options)
    gpu_loss.load_state_dict(cpu_loss.state_dict())
    gpu_loss.cuda()
    for module in (cpu_loss, gpu_loss):
        module.eval()  # BatchNorm with running statistics on both devices
    cpu_features = [f.clone().requires_grad_() for f in features]
    gpu_features = [f.cuda().requires_grad_() for f in features]
    expected = cpu_loss.terms(cpu_features, logits, target)
    got = gpu_loss.terms(gpu_features, logits.cuda(), target.cuda())
    assert got.loss.is_cuda
    assert torch.equal(got.hard_negatives.cpu(), expected.hard_negatives)
    assert expected.hard_negatives.sum() > 0  # BANE picked pixels: the comparison covers it
    assert torch.allclose(got.loss.cpu(), expected.loss, rtol=1e-4, atol=1e-6)
    expected.loss.backward()
    got.loss.backward()
    for a, b in zip(cpu_features, gpu_features):
        assert a.grad.abs().sum() > 0
        assert (b.grad.cpu() - a.grad).norm() / a.grad.norm() < 1e-4


def test_contextrast_loss_under_bf16_autocast_on_cuda_is_close_to_float32_on_cpu(no_tf32):
    # 12 classes, four layers of HRNet-like widths: the projection heads in bf16 (autocast) on
    # the device, the loss's own arithmetic in float32 there as on the CPU. Sampling off and
    # the same BatchNorm statistics (eval mode) on both sides, as above.
    torch.manual_seed(0)
    channels, classes = (48, 96, 192, 384), 12
    features = [torch.randn(2, c, 64 // 2**i, 128 // 2**i) for i, c in enumerate(channels)]
    coarse = torch.randint(0, classes, (2, 1, 8, 16)).float()
    target = torch.nn.functional.interpolate(coarse, size=(256, 512), mode="nearest")[:, 0]
    target = target.long()
    target[:, :16] = 255
    shifted = torch.roll(target[:, ::4, ::4], shifts=(2, 3), dims=(1, 2)).clamp(max=classes - 1)
    logits = 3 * torch.nn.functional.one_hot(shifted, classes).permute(0, 3, 1, 2).float()
    logits += torch.randn_like(logits)
    options = dict(max_pixels=None, max_positives=None, max_negatives=None)
    cpu_loss = ContextrastLoss(classes, channels, **options).eval()
    gpu_loss = ContextrastLoss(classes, channels, **options).eval()
    gpu_loss.load_state_dict(cpu_loss.state_dict())
    gpu_loss.cuda()
    cpu_features = [f.clone().requires_grad_() for f in features]
    gpu_features = [f.cuda().requires_grad_() for f in features]
    expected = cpu_loss.terms(cpu_features, logits, target)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = gpu_loss.terms(gpu_features, logits.cuda(), target.cuda())
    assert got.loss.dtype == torch.float32
    assert torch.equal(got.hard_negatives.cpu(), expected.hard_negatives)
    assert expected.hard_negatives.sum() > 0
    assert abs(got.loss.item() - expected.loss.item()) < 2e-2 * abs(expected.loss.item())
    expected.loss.backward()
    got.loss.backward()
    for a, b in zip(cpu_features, gpu_features):
        assert a.grad.abs().sum() > 0
        # bf16 heads: about 4 % on the CPU's bf16 autocast at these shapes.
        assert (b.grad.cpu() - a.grad).norm() / a.grad.norm() < 0.15
