"""FeatureTap on the models people already train (CPU, no pretrained weights)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contextrast import ContextrastLoss, FeatureTap, PixelContrastLoss
from contextrast.models import preset_layers

smp = pytest.importorskip("segmentation_models_pytorch")
timm = pytest.importorskip("timm")
segmentation = pytest.importorskip("torchvision.models.segmentation")

N = 3


class TimmWithHead(nn.Module):
    """A timm features_only backbone under a head of the user's own."""

    def __init__(self, name="resnet18"):
        super().__init__()
        self.backbone = timm.create_model(name, features_only=True, pretrained=False)
        self.head = nn.Conv2d(self.backbone.feature_info.channels()[-1], N, 1)

    def forward(self, x):
        return self.head(self.backbone(x)[-1])


def torchvision_mobilenet():
    return segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=N
    )


def torchvision_resnet():
    return segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=N, aux_loss=False
    )


FAMILIES = {
    "torchvision-mobilenet": (
        torchvision_mobilenet,
        lambda out: out["out"],
        ["backbone.3", "backbone.6", "backbone.12", "backbone.16"],
        "backbone.3",
    ),
    "torchvision-resnet": (
        torchvision_resnet,
        lambda out: out["out"],
        [f"backbone.layer{i}" for i in range(1, 5)],
        "backbone.layer1",
    ),
    "smp-unet": (
        lambda: smp.Unet("resnet18", encoder_weights=None, classes=N),
        lambda out: out,
        [f"encoder[{i}]" for i in range(2, 6)],
        "encoder.layer1",
    ),
    "timm-features-only": (
        TimmWithHead,
        lambda out: out,
        [f"backbone[{i}]" for i in range(-4, 0)],
        "backbone.layer1",
    ),
    # timm builds EfficientNets' and MobileNetV3s' features_only models as classes of their
    # own (EfficientNetFeatures), not FeatureListNet.
    "timm-efficientnet-features-only": (
        lambda: TimmWithHead("efficientnet_lite0"),
        lambda out: out,
        [f"backbone[{i}]" for i in range(-4, 0)],
        "backbone.blocks.1",
    ),
}


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, N, (2, 64, 64), generator=g)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_loss_trains_a_model_it_only_hooks(family):
    make, logits_of, layers, first_stage = FAMILIES[family]
    torch.manual_seed(0)
    model = make()
    keys = list(model.state_dict())
    images, target = batch()
    tap = FeatureTap(model)
    assert tap.layers == layers == preset_layers(model)
    channels = tap.channels(images)
    loss = ContextrastLoss(N, channels)
    logits = logits_of(model(images))
    features = tap.features()
    assert [f.shape[1] for f in features] == channels
    assert [f.shape[-1] for f in features] == sorted((f.shape[-1] for f in features), reverse=True)
    value = loss(features, logits, target)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    hooked = dict(model.named_modules())[first_stage]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in hooked.parameters())
    # Nothing was added to the model, and nothing stays on it.
    assert list(model.state_dict()) == keys
    tap.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model(images)
    with pytest.raises(RuntimeError, match="this FeatureTap was removed"):
        tap.features()


def test_features_are_handed_over_once_and_never_kept_past_a_step():
    model = smp.Unet("resnet18", encoder_weights=None, classes=N)
    images, _ = batch()
    with FeatureTap(model) as tap:
        model(images)
        first = tap.features()
        with pytest.raises(RuntimeError, match="call the model before features"):
            tap.features()  # taken already: nothing is held
        model(images)
        model(images)  # a forward whose features nobody takes: dropped by the next one
        assert tap._outputs and all(
            a is not b for a, b in zip(first, tap.features())
        )  # the newest forward's tensors
    assert not tap._outputs


def test_a_wrong_layer_name_lists_the_names_to_choose_from():
    model = TimmWithHead()
    with pytest.raises(ValueError, match=r"unknown layer 'backbone.layer9'; close: \[") as err:
        FeatureTap(model, ["backbone.layer1", "backbone.layer9"])
    assert "'backbone.layer4'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no preset for Sequential"):
        FeatureTap(nn.Sequential(nn.Conv2d(3, 4, 1)))
    tap = FeatureTap(model, ["head[0]"])
    model(batch()[0])
    with pytest.raises(ValueError) as err:
        tap.features()
    assert str(err.value) == (
        "layer 'head[0]': 'head' returned a Tensor, not a list, tuple or dict; drop the [0]"
    )


def test_layers_given_as_one_string_are_refused():
    # Issue 20: FeatureTap(m, "backbone.3") iterated the string: "unknown layer 'b'".
    with pytest.raises(ValueError) as err:
        FeatureTap(torchvision_mobilenet(), "backbone.3")
    assert str(err.value) == (
        "layers must be a list of module names, got the string 'backbone.3'; pass ['backbone.3']"
    )


@pytest.mark.parametrize("index", [5, -6])
def test_an_index_out_of_range_names_the_layer_index_and_length(index):
    # Issue 20: an IndexError from deep inside features().
    model = TimmWithHead()  # resnet18 features_only: 5 maps
    images, _ = batch()
    tap = FeatureTap(model, ["backbone[-5]", "backbone[4]", f"backbone[{index}]"])
    model(images)
    with pytest.raises(ValueError) as err:
        tap.features()
    assert str(err.value) == (
        f"layer 'backbone[{index}]': index {index} is out of range for the 5 outputs of "
        "'backbone' (a list of length 5; allowed -5 to 4)"
    )


def test_features_after_remove_say_the_tap_was_removed():
    model = TimmWithHead()
    images, _ = batch()
    with FeatureTap(model) as tap:
        model(images)
    model(images)
    with pytest.raises(RuntimeError) as err:
        tap.features()
    assert str(err.value) == (
        "this FeatureTap was removed (remove() or the end of its with block) and records "
        "nothing; create a new FeatureTap(model) to take features again"
    )
    with pytest.raises(RuntimeError, match="this FeatureTap was removed"):
        tap.channels(images)


def test_a_dict_output_is_tapped_by_key():
    # Issue 20: torchvision's IntermediateLayerGetter (the backbone of its segmentation
    # models) returns a dict: "backbone[out]" takes a value by key.
    torch.manual_seed(0)
    model = segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=N, aux_loss=True
    )
    images, target = batch()
    tap = FeatureTap(model, ["backbone[aux]", "backbone['out']"])
    assert tap.channels(images) == [1024, 2048]
    model.eval()
    with torch.no_grad():
        logits = model(images)["out"]
        features = tap.features()
        want = model.backbone(images)
    assert features[0] is not want["aux"] and torch.equal(features[0], want["aux"])
    assert torch.equal(features[1], want["out"])
    loss = ContextrastLoss(N, [1024, 2048], layer_weights=(0.5, 1.0)).eval()
    assert torch.isfinite(loss(features, logits, target))
    tap = FeatureTap(model, ["backbone[feat]"])
    model(images)
    with pytest.raises(ValueError) as err:
        tap.features()
    assert str(err.value) == (
        "layer 'backbone[feat]': 'backbone' returned a dict without the key 'feat'; its keys: "
        "['aux', 'out']"
    )


def test_a_deep_copy_of_the_model_does_not_feed_the_original_tap():
    # Issue 20: an EMA / teacher copy made after tapping carried the hooks along, and its
    # forward wrote into (and cleared) the original tap: features() returned the copy's
    # tensors without a word. The copy's hooks now record nothing; it may get its own tap.
    import copy

    torch.manual_seed(0)
    model = TimmWithHead()
    tap = FeatureTap(model)
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(0.5)
    images, _ = batch()
    other, _ = batch(seed=1)
    model.eval()
    teacher.eval()
    with torch.no_grad():
        want = model.backbone(images)[-4:]
        model(images)
        teacher(other)  # between the student's forward and features(): must not touch it
        got = tap.features()
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        teacher(images)  # the copy alone: the original tap has nothing
        with pytest.raises(RuntimeError, match="call the model before features"):
            tap.features()
        # The copy has no active tap; one of its own is independent of the original's.
        teacher_tap = FeatureTap(teacher)
        teacher(other)
        model(images)
        theirs, ours = teacher_tap.features(), tap.features()
        for a, b, c in zip(theirs, teacher.backbone(other)[-4:], ours):
            assert torch.equal(a, b) and not torch.equal(a, c)


def test_under_autocast_and_torch_compile_the_tap_sees_the_same_features():
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=N)
    images, target = batch()
    tap = FeatureTap(model)
    loss = ContextrastLoss(N, tap.channels(images))
    eager_logits = model(images)
    eager = tap.features()
    compiled = torch.compile(model, backend="aot_eager")
    logits = compiled(images)
    features = tap.features()
    assert torch.allclose(logits, eager_logits, atol=1e-5)
    for a, b in zip(features, eager):
        assert torch.allclose(a, b, atol=1e-5)
    loss(features, logits, target).backward()
    assert model.encoder.layer1[0].conv1.weight.grad.abs().sum() > 0
    # A tap on the compiled wrapper names the same layers through it.
    assert FeatureTap(compiled).layers == [f"_orig_mod.encoder[{i}]" for i in range(2, 6)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
        features = tap.features()
        assert features[0].dtype == torch.bfloat16
        value = loss(features, logits, target)
    value.backward()
    assert torch.isfinite(value)


def test_every_peer_loss_takes_tapped_features():
    model = smp.Unet("resnet18", encoder_weights=None, classes=N)
    images, target = batch()
    tap = FeatureTap(model)
    peer = PixelContrastLoss(N, tap.channels(images))
    logits = model(images)
    value = peer(tap.features(), logits, target)
    assert torch.isfinite(value)


def _ddp_worker(rank, world, store, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = nn.parallel.DistributedDataParallel(TimmWithHead())
    tap = FeatureTap(model)  # through the wrapper: "module.backbone[-4]", ...
    images, target = batch(seed=rank)  # each rank its own data
    loss = ContextrastLoss(N, tap.channels(images))
    logits = model(images)
    value = F.cross_entropy(F.interpolate(logits, target.shape[-2:]), target)
    value = value + loss(tap.features(), logits, target)
    value.backward()
    grad = model.module.backbone.conv1.weight.grad  # (timm zero-inits each block's last BN)
    torch.save({"layers": tap.layers, "grad": grad}, results / f"{rank}.pt")
    dist.destroy_process_group()


def test_under_ddp_the_tapped_layers_get_the_all_reduced_gradient(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, tmp_path / "store", tmp_path), nprocs=2)
    first, second = (torch.load(tmp_path / f"{r}.pt") for r in range(2))
    assert first["layers"] == [f"module.backbone[{i}]" for i in range(-4, 0)]
    assert first["grad"].abs().sum() > 0
    assert torch.equal(first["grad"], second["grad"])  # DDP averaged them


@pytest.mark.parametrize(("depth", "items"), [(3, [2, 3]), (4, [2, 3, 4]), (5, [2, 3, 4, 5])])
def test_a_shallow_smp_encoder_never_taps_the_input_image(depth, items):
    decoder = {3: (64, 32, 16), 4: (128, 64, 32, 16), 5: (256, 128, 64, 32, 16)}[depth]
    model = smp.Unet("resnet18", encoder_weights=None, classes=N, encoder_depth=depth,
                     decoder_channels=decoder)  # fmt: skip
    tap = FeatureTap(model)
    assert tap.layers == [f"encoder[{i}]" for i in items]
    images, _ = batch()
    model(images)
    sizes = [f.shape[-1] for f in tap.features()]
    assert sizes == [64 // 2**i for i in items]  # strides 4, 8, …: no 3-channel stride-1 map


def test_timm_swin_maps_come_out_channels_first_and_a_vit_gives_its_three():
    # Swin returns (B, h, w, C) (timm's output_fmt NHWC); the loss reads (B, C, h, w).
    swin = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, img_size=64)
    image = torch.randn(1, 3, 64, 64)
    with FeatureTap(swin) as tap:
        assert tap.channels(image) == [96, 192, 384, 768]
        swin(image)
        assert [tuple(f.shape[-2:]) for f in tap.features()] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    # Stages named by hand on the whole model (its output_fmt is NHWC too)
    whole = timm.create_model("swin_tiny_patch4_window7_224", img_size=64)
    with FeatureTap(whole, [f"layers.{i}" for i in range(4)]) as tap:
        assert tap.channels(image) == [96, 192, 384, 768]
    # A ViT lists 12 blocks in its feature_info but returns out_indices' 3: all of them.
    vit = timm.create_model("vit_tiny_patch16_224", features_only=True, img_size=64)
    assert preset_layers(vit) == ["[-3]", "[-2]", "[-1]"]
    with FeatureTap(vit) as tap:
        assert tap.channels(image) == [192, 192, 192]
