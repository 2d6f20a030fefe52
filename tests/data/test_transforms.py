import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from contextrast.data import EvalTransform, TrainTransform, build_dataset
from contextrast.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_eval_transform_normalises_exactly():
    image = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    out, label = EvalTransform()(image, torch.zeros(2, 2, dtype=torch.long))
    for c in range(3):
        assert out[c, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    assert label.shape == (2, 2)


def test_train_transform_crop_size_and_nearest_labels():
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    label = torch.ones(40, 50, dtype=torch.long)
    label[:, 25:] = 3
    transform = TrainTransform(crop_size=(32, 32), scale_range=(0.5, 2.0))
    for seed in range(10):
        out, out_label = transform(image, label, generator(seed))
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert out_label.shape == (32, 32)
        # Nearest neighbour only: no value that was not in the input (or the padding).
        assert set(out_label.unique().tolist()) <= {1, 3, 255}


def test_train_transform_pads_with_ignore_and_mean():
    image = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    label = torch.full((4, 4), 2, dtype=torch.long)
    transform = TrainTransform(
        crop_size=(6, 6), scale_range=(1, 1), hflip=0, color_jitter=(0, 0, 0, 0)
    )
    out, out_label = transform(image, label, generator())
    assert (out_label[:4, :4] == 2).all() and (out_label[4:] == 255).all()
    assert (out_label[:, 4:] == 255).all()
    assert (out[:, 4:, :] == 0).all() and (out[:, :4, :4] != 0).all()


def test_train_transform_flip_is_paired():
    image = torch.arange(3 * 2 * 4, dtype=torch.uint8).view(3, 2, 4)
    label = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    transform = TrainTransform(
        crop_size=(2, 4), scale_range=(1, 1), hflip=1.0, color_jitter=(0, 0, 0, 0)
    )
    out, out_label = transform(image, label, generator())
    assert out_label.tolist() == [[3, 2, 1, 0], [3, 2, 1, 0]]
    assert torch.allclose(out, EvalTransform()(image.flip(-1), label)[0])


def test_train_transform_is_a_function_of_the_generator():
    image = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8)
    label = torch.randint(0, 4, (30, 30))
    transform = TrainTransform(crop_size=(16, 16), color_jitter=(0.4, 0.4, 0.4, 0.1))
    a = transform(image, label, generator(7))
    b = transform(image, label, generator(7))
    c = transform(image, label, generator(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_size": (0, 4)}, "crop_size"),
        ({"scale_range": (2.0, 1.0)}, "scale_range"),
        ({"hflip": 2}, "hflip"),
        ({"color_jitter": (0.1, 0.1)}, "color_jitter"),
    ],
)
def test_train_transform_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainTransform(**kwargs)


def digits(split="train", **kwargs):
    transform = TrainTransform(crop_size=(64, 64), scale_range=(0.75, 1.25), hflip=0)
    return build_dataset("digits", split=split, transform=transform, length=8, **kwargs)


def test_loader_output_does_not_depend_on_workers_and_epoch_changes_it():
    dataset = digits()
    single = [b.image for b in DataLoader(dataset, batch_size=4, num_workers=0)]
    double = [b.image for b in DataLoader(dataset, batch_size=4, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(single, double))
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0].image, single[0][0])


def test_distributed_sampler_ranks_see_the_same_samples_for_the_same_indices():
    dataset = digits()
    seen = {}
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        for batch in DataLoader(dataset, batch_size=2, sampler=sampler):
            for index, image in zip(batch.index.tolist(), batch.image):
                seen[index] = image
    assert sorted(seen) == list(range(8))
    for index, image in seen.items():
        assert torch.equal(image, dataset[index].image)
