import torch
import torch.nn.functional as F

from contextrast.models import ASPPHead, HRNetV2Head, OCRHead
from contextrast.models.heads import concat_upsampled


def test_concat_upsampled_keeps_first_map_and_order():
    a = torch.randn(1, 2, 4, 4)
    b = torch.randn(1, 3, 2, 2)
    out = concat_upsampled([a, b])
    assert out.shape == (1, 5, 4, 4)
    assert torch.equal(out[:, :2], a)
    assert torch.allclose(out[:, 2:], F.interpolate(b, size=(4, 4), mode="bilinear"))


def test_hrnetv2_head_width_is_the_concatenation():
    head = HRNetV2Head([48, 96, 192, 384], num_classes=19)
    assert head.classifier.in_channels == 720
    feats = [torch.randn(2, c, 16 // 2**i, 32 // 2**i) for i, c in enumerate([48, 96, 192, 384])]
    logits, aux = head(feats)
    assert logits.shape == (2, 19, 16, 32) and aux is None


def test_aspp_head_pooling_branch_is_constant_over_space():
    head = ASPPHead(8, num_classes=3, channels=4, rates=(1, 2)).eval()
    x = torch.randn(1, 8, 6, 7)
    pooled = head.branches[-1](x)
    assert torch.allclose(pooled, pooled[:, :, :1, :1].expand_as(pooled))
    logits, _ = head([x])
    assert logits.shape == (1, 3, 6, 7)


def test_ocr_head_matches_a_loop_over_pixels_and_classes():
    torch.manual_seed(0)
    head = OCRHead([3, 5], num_classes=2, mid_channels=4, key_channels=2).eval()
    feats = [torch.randn(1, 3, 3, 4), torch.randn(1, 5, 2, 2)]
    logits, aux = head(feats)
    with torch.no_grad():
        x = concat_upsampled(feats)
        want_aux = head.soft_regions(x)
        pixels = head.pixels(x)[0]  # (M, h, w)
        m, h, w = pixels.shape
        flat = pixels.reshape(m, h * w)
        # Object region n: pixel representations weighted by softmax over space of region n.
        objects = torch.stack(
            [(torch.softmax(want_aux[0, n].reshape(-1), 0) * flat).sum(1) for n in range(2)], 1
        )  # (M, N)
        obj_map = objects.unsqueeze(0).unsqueeze(3)  # (1, M, N, 1)
        keys = head.key(obj_map)[0, :, :, 0]  # (K, N)
        values = head.value(obj_map)[0, :, :, 0]  # (K, N)
        queries = head.query(pixels.unsqueeze(0))[0].reshape(2, -1)  # (K, hw)
        context = torch.zeros(2, h * w)
        for p in range(h * w):
            weights = torch.softmax(keys.t() @ queries[:, p] / 2**0.5, 0)  # (N,)
            context[:, p] = values @ weights
        context = head.up(context.reshape(1, 2, h, w))
        fused = head.fuse(torch.cat([context, pixels.unsqueeze(0)], 1))
        want = head.classifier(fused)
    assert torch.allclose(aux, want_aux)
    assert torch.allclose(logits, want, atol=1e-5)
