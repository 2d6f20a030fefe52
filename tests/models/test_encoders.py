import pytest
import timm
import torch
import torchvision

from contextrast import create_model
from contextrast.models import TimmEncoder


def assert_same_weights(module: torch.nn.Module, state: dict) -> None:
    own = module.state_dict()
    for key, value in own.items():
        if key in state:
            assert torch.equal(value, state[key]), key


def test_loads_torchvision_key_names(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    # Old torchvision files have no BatchNorm counters: they must still load.
    state = {k: v for k, v in reference.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "resnet18.pth")
    model = create_model("deeplabv3_r18", num_classes=3, pretrained=tmp_path / "resnet18.pth")
    assert_same_weights(model.encoder.body, state)
    assert torch.equal(model.encoder.body.conv1.weight, reference.conv1.weight)


def test_loads_timm_keys_wrapped_and_prefixed(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("hrnet_w18_small_v2")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "hrnet.pth")
    model = create_model("hrnetv2_w18_small", num_classes=3, pretrained=str(tmp_path / "hrnet.pth"))
    assert_same_weights(model.encoder.body, source.state_dict())
    fresh = create_model("hrnetv2_w18_small", num_classes=3)
    assert not torch.equal(fresh.encoder.body.conv1.weight, model.encoder.body.conv1.weight)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=f"pretrained weights {path}: no such file"):
        create_model("deeplabv3_r18", num_classes=3, pretrained=path)


def test_mismatched_file_names_path_and_first_keys(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError) as error:
        create_model("hrnetv2_w18_small", num_classes=3, pretrained=tmp_path / "r18.pth")
    message = str(error.value)
    assert str(tmp_path / "r18.pth") in message and "\n" not in message
    assert "keys missing from the file, first ['conv2.weight'" in message
    assert "conv1.weight (file (64, 3, 7, 7), backbone hrnet_w18_small_v2 (64, 3, 3, 3))" in message


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=f"pretrained weights {path}: not a readable PyTorch"):
        create_model("deeplabv3_r18", num_classes=3, pretrained=path)
    # a pickle torch will not load with weights_only: one clause, not torch's paragraphs
    json_path = tmp_path / "weights.json"
    json_path.write_text('{"a": 1}')
    with pytest.raises(ValueError) as error:
        create_model("deeplabv3_r18", num_classes=3, pretrained=json_path)
    message = str(error.value)
    assert message.endswith(")") and "\n" not in message and len(message) < 300
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a dict of tensors"):
        create_model("deeplabv3_r18", num_classes=3, pretrained=tmp_path / "list.pth")


def test_pretrained_true_asks_timm_for_its_weights(monkeypatch):
    calls = []
    original = timm.create_model

    def spy(name, **kwargs):
        calls.append((name, kwargs["pretrained"]))
        return original(name, **{**kwargs, "pretrained": False})

    monkeypatch.setattr(timm, "create_model", spy)
    TimmEncoder("resnet18", pretrained=True)
    TimmEncoder("resnet18", pretrained=False)
    assert calls == [("resnet18", True), ("resnet18", False)]


def test_hrnet_features_are_raw_branches_not_incre():
    encoder = TimmEncoder("hrnet_w18_small_v2")
    assert encoder.channels == [18, 36, 72, 144]  # "incre" features would be 128/256/512/1024
