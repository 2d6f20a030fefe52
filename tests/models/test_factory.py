import copy

import pytest
import torch
import torch.nn.functional as F

from contextrast import ContextrastLoss, create_model, list_models
from contextrast.models import SegmentationOutput, convert_sync_batchnorm, export_inference

SMALL = ["deeplabv3_r18", "hrnetv2_w18_small", "ocrnet_hrnetv2_w18_small"]
# The export round trips of the HRNet-based models take 15-30 s each on a 2-core CPU:
# opt-in (-m slow), so that `make test` stays within its 5 minutes. DeepLabV3's run always,
# and tests/test_cli.py::test_eval_predict_export exports hrnetv2_w18_small through the CLI
# (pt2 and ONNX, checked against PyTorch) in every run.
EXPORTED = [
    name if name == "deeplabv3_r18" else pytest.param(name, marks=pytest.mark.slow)
    for name in SMALL
]
BIG = ["deeplabv3_r101", "hrnetv2_w48", "ocrnet_hrnetv2_w48"]
EXPECTED = {
    # name: (feature channels, feature strides, logits stride, has aux logits)
    "deeplabv3_r18": ([64, 128, 256, 512], [4, 8, 8, 8], 8, False),
    "hrnetv2_w18_small": ([18, 36, 72, 144], [4, 8, 16, 32], 4, False),
    "ocrnet_hrnetv2_w18_small": ([18, 36, 72, 144], [4, 8, 16, 32], 4, True),
    "deeplabv3_r101": ([256, 512, 1024, 2048], [4, 8, 8, 8], 8, False),
    "hrnetv2_w48": ([48, 96, 192, 384], [4, 8, 16, 32], 4, False),
    "ocrnet_hrnetv2_w48": ([48, 96, 192, 384], [4, 8, 16, 32], 4, True),
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_preset(name: str, height: int = 64, width: int = 96) -> None:
    torch.manual_seed(0)
    channels, strides, stride, has_aux = EXPECTED[name]
    model = create_model(name, num_classes=5)
    assert model.feature_channels == channels and model.feature_strides == strides
    assert model.output_stride == stride
    images = torch.randn(2, 3, height, width)
    out = model(images)
    assert isinstance(out, SegmentationOutput)
    assert out.logits.shape == (2, 5, height // stride, width // stride)
    assert [f.shape[1] for f in out.features] == channels
    assert [(f.shape[2], f.shape[3]) for f in out.features] == [
        (height // s, width // s) for s in strides
    ]
    assert (out.aux_logits is not None) == has_aux
    target = torch.randint(0, 5, (2, height, width))
    contrast = ContextrastLoss(5, model.feature_channels, embed_dim=16)
    ce = F.cross_entropy(F.interpolate(out.logits, size=(height, width)), target)
    loss = ce + contrast(out.features, out.logits, target)
    loss.backward()
    stem = next(model.encoder.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    # Training with the loss adds nothing to the model: the projection heads are the loss's.
    inference = model.inference()
    assert count(inference) == count(model)
    assert not set(map(id, contrast.parameters())) & set(map(id, model.parameters()))
    model.eval()
    with torch.no_grad():
        full = inference(images)
        want = F.interpolate(model(images).logits, size=(height, width), mode="bilinear")
    assert full.shape == (2, 5, height, width)
    assert torch.allclose(full, want)


@pytest.mark.parametrize("name", SMALL + BIG)
def test_presets(name):
    check_preset(name)


def test_big_preset_sizes_match_the_published_architectures():
    # HRNetV2-W48 65.9 M, OCRNet (HRNetV2-W48) 70.4 M, DeepLabV3-ResNet-101 58.6 M (no aux).
    for name, millions in [("hrnetv2_w48", 65.86), ("ocrnet_hrnetv2_w48", 70.37)]:
        assert count(create_model(name, 19)) / 1e6 == pytest.approx(millions, abs=0.01)
    assert count(create_model("deeplabv3_r101", 21)) / 1e6 == pytest.approx(58.63, abs=0.01)


@pytest.mark.parametrize("name", EXPORTED)
def test_export_round_trips_to_the_same_logits(name, tmp_path):
    torch.manual_seed(1)
    model = create_model(name, num_classes=3)
    path = export_inference(model, tmp_path / "model.pt2", torch.randn(2, 3, 64, 64))
    assert model.training  # restored
    loaded = torch.export.load(path).module()
    model.eval()
    for shape in [(2, 3, 64, 64), (1, 3, 96, 128)]:  # dynamic batch and size
        images = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(loaded(images), model.inference()(images), atol=1e-5)


def test_aux_head_is_training_only():
    plain = create_model("deeplabv3_r18", num_classes=4)
    with_aux = create_model("deeplabv3_r18", num_classes=4, aux=True)
    out = with_aux(torch.randn(2, 3, 64, 64))
    assert out.aux_logits.shape == (2, 4, 8, 8)
    assert count(with_aux) > count(plain)
    assert count(with_aux.inference()) == count(plain)


def test_generic_timm_backbone():
    model = create_model("tu-efficientnet_lite0", num_classes=4)
    assert model.feature_channels == [24, 40, 112, 320]
    assert model.feature_strides == [4, 8, 16, 32]
    out = model(torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 4, 16, 16)
    ocr = create_model("tu-resnet18", num_classes=4, head="ocr", head_width=32)
    assert ocr(torch.randn(2, 3, 64, 64)).aux_logits.shape == (2, 4, 16, 16)
    picked = create_model("tu-resnet18", num_classes=4, head="aspp", out_indices=(2, 3, 4))
    assert picked.feature_channels == [128, 256, 512] and picked.output_stride == 32


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("segformer", {}, r"unknown model 'segformer'; choose from \['deeplabv3_r101'"),
        ("hrnetv2_w48", {"head": "ocr"}, r"unknown arguments \['head'\]; allowed: \['aux'\]"),
        ("tu-resnet18", {"head": "psp"}, r"unknown head 'psp'; choose from"),
        ("tu-no_such_net", {}, "unknown timm backbone 'no_such_net'"),
    ],
)
def test_bad_names_and_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, num_classes=3, **kwargs)


def test_list_models_are_the_presets():
    assert list_models() == sorted(SMALL + BIG)


def test_sync_batchnorm_conversion_only_for_cuda():
    model = create_model("hrnetv2_w18_small", num_classes=3)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert convert_sync_batchnorm(model, "cpu") is model
    converted = convert_sync_batchnorm(model, torch.device("cuda", 0))
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == batchnorms
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())


@pytest.mark.parametrize("name", EXPORTED)
def test_onnx_export_runs_in_onnxruntime_like_pytorch(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from contextrast import ContextrastLoss
    from contextrast.models import ONNX_OPSET, export_onnx

    torch.manual_seed(1)
    model = create_model(name, num_classes=3, aux=name.startswith("deeplabv3"))
    path = export_onnx(model, tmp_path / "model.onnx", torch.randn(1, 3, 64, 64))
    assert model.training  # restored
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    model.eval()
    # Against float64: PyTorch's own float32 result is ~1e-4 (relative) off on OCR's
    # attention, so float32 against float32 would measure two roundings, not the export.
    exact = copy.deepcopy(model).double()
    for shape in [(2, 3, 64, 64), (1, 3, 96, 128)]:  # dynamic batch, height and width
        images = torch.randn(shape)
        with torch.no_grad():
            want = exact.inference()(images.double()).numpy()
        got = session.run(["logits"], {"images": images.numpy()})[0]
        assert got.shape == want.shape
        # The ONNX graph folds BatchNorm into the convolutions: float32 rounding only.
        assert abs(got - want).max() <= 1e-4 * abs(want).max()
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == ONNX_OPSET
    # Only inference weights: every stored value is the inference model's (or a small folded
    # constant), and none of the loss heads or the auxiliary head is there.
    inference = model.inference().state_dict()
    loss_heads = ContextrastLoss(3, [f.shape[1] for f in model(torch.randn(2, 3, 64, 64)).features])
    training_only = (set(model.state_dict()) - set(inference)) | set(loss_heads.state_dict())
    stored = {t.name: t for t in graph.graph.initializer}
    assert not set(stored) & training_only
    assert all(n in inference or n.startswith("val_") for n in stored)
    size = sum(int(torch.tensor(t.dims).prod()) for t in stored.values())
    assert size <= sum(v.numel() for v in inference.values())
