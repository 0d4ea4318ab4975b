"""The synthetic dataset, joint transforms and the seeded iteration sampler."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import DataLoader

from fakd.data import TransformedDataset, get_dataset
from fakd.data.synthetic import SHAPES, SyntheticSegmentation, class_pairs
from fakd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    IterationSampler,
    TrainSampleView,
    TrainTransform,
    seeded_generator,
)
from fakd.errors import UserError


def test_items_follow_the_protocol() -> None:
    data = SyntheticSegmentation(num_classes=8, image_size=(48, 64), length=10)
    image, label = data[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    assert label.dtype == torch.int64 and label.shape == (48, 64)
    assert len(data) == 10 and data.ignore_index == 255
    assert len(data.class_names) == 8 and data.class_names[0] == "background"
    with pytest.raises(IndexError):
        data[10]


def test_same_seed_and_index_give_identical_samples() -> None:
    first, second = SyntheticSegmentation(seed=3), SyntheticSegmentation(seed=3)
    for index in (0, 7, 511):
        assert torch.equal(first[index][0], second[index][0])
        assert torch.equal(first[index][1], second[index][1])
    assert not torch.equal(first[0][0], first[1][0])


def test_seeds_and_splits_give_different_images() -> None:
    train = SyntheticSegmentation(seed=0, split="train", length=16)
    other_seed = SyntheticSegmentation(seed=1, split="train", length=16)
    val = SyntheticSegmentation(seed=0, split="val", length=16)
    train_images = {train[i][0].numpy().tobytes() for i in range(16)}
    assert not train_images & {other_seed[i][0].numpy().tobytes() for i in range(16)}
    assert not train_images & {val[i][0].numpy().tobytes() for i in range(16)}


@pytest.mark.parametrize("num_classes", [2, 8, 21])
def test_label_ids_in_range_and_every_class_appears(num_classes: int) -> None:
    data = SyntheticSegmentation(num_classes=num_classes, image_size=32, length=48)
    seen = torch.zeros(num_classes, dtype=torch.bool)
    for index in range(len(data)):
        label = data[index][1]
        assert int(label.min()) >= 0 and int(label.max()) < num_classes
        seen[label.unique()] = True
    assert seen.all()


def test_classes_need_both_shape_and_texture() -> None:
    pairs = class_pairs(7)
    assert len(set(pairs)) == 7
    for shape in {s for s, _ in pairs}:
        assert sum(s == shape for s, _ in pairs) >= 2
    for texture in {t for _, t in pairs}:
        assert sum(t == texture for _, t in pairs) >= 2
    many = class_pairs(200)  # past the base pools the texture pool grows; pairs stay distinct
    assert len(set(many)) == 200 and {s for s, _ in many} == set(SHAPES)


def test_generation_is_fast() -> None:
    data = SyntheticSegmentation(image_size=64)
    data.generate(0)
    start = time.perf_counter()
    for index in range(100):
        data.generate(index)
    assert (time.perf_counter() - start) / 100 < 0.004  # target < 2 ms; slack for a busy machine


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"num_classes": 1}, "data.num_classes"),
        ({"num_classes": 256}, "data.num_classes"),
        ({"image_size": 8}, "data.image_size"),
        ({"image_size": (64, 8)}, "data.image_size"),
        ({"length": 0}, "data.length"),
        ({"split": "holdout"}, "split"),
    ],
)
def test_bad_options_are_user_errors(options: dict, key: str) -> None:
    with pytest.raises(UserError) as info:
        SyntheticSegmentation(**options)
    assert info.value.key == key


def test_get_dataset_synthetic_with_transform() -> None:
    data = get_dataset("synthetic", None, "val", transform=EvalTransform(), num_classes=4, image_size=32, length=5)
    assert isinstance(data, TransformedDataset)
    assert (len(data), data.num_classes, data.ignore_index) == (5, 4, 255)
    image, label = data[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and label.dtype == torch.int64
    raw = SyntheticSegmentation(num_classes=4, image_size=32, length=5, split="val")[0]
    expected = (raw[0].float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None
    ]
    torch.testing.assert_close(image, expected)
    assert torch.equal(label, raw[1])


@pytest.mark.parametrize(("name", "phrase"), [("mnist", "unknown dataset")])
def test_get_dataset_rejects_other_names(name: str, phrase: str) -> None:
    with pytest.raises(UserError) as info:
        get_dataset(name, "/data", "train")
    assert info.value.key == "data.name"
    assert phrase in info.value.message and "synthetic" in info.value.message


def test_get_dataset_rejects_unknown_option() -> None:
    with pytest.raises(UserError) as info:
        get_dataset("synthetic", None, "train", colour=True)
    assert info.value.key == "data.colour" and "num_classes" in info.value.message


def _sample(size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return SyntheticSegmentation(image_size=size, length=4, seed=seed)[1]


def test_train_transform_shapes_and_types() -> None:
    image, label = _sample(48)
    out_image, out_label = TrainTransform((32, 40))(image, label, seeded_generator(0))
    assert out_image.dtype == torch.float32 and out_image.shape == (3, 32, 40)
    assert out_label.dtype == torch.int64 and out_label.shape == (32, 40)
    assert set(out_label.unique().tolist()) <= set(range(8)) | {255}


def test_scaling_below_crop_pads_with_ignore_and_mean_colour() -> None:
    image, label = _sample(32)
    transform = TrainTransform(32, scale_range=(0.5, 0.5), hflip=False)
    out_image, out_label = transform(image, label, seeded_generator(1))
    assert (out_label[16:, :] == 255).all() and (out_label[:, 16:] == 255).all()
    assert (out_label[:16, :16] != 255).all()
    assert (out_image[:, 16:, :] == 0).all() and (out_image[:, :, 16:] == 0).all()


def test_train_transform_is_a_function_of_the_generator_seed() -> None:
    image, label = _sample(32)
    transform = TrainTransform(24)
    first = transform(image, label, seeded_generator(5, 1, 2))
    second = transform(image, label, seeded_generator(5, 1, 2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    others = [transform(image, label, seeded_generator(5, 1, draw)) for draw in range(3, 8)]
    assert any(not torch.equal(first[0], other[0]) for other in others)


def test_flip_moves_image_and_label_together() -> None:
    image, label = _sample(32)
    plain = TrainTransform(32, scale_range=(1.0, 1.0), hflip=False)
    flipping = TrainTransform(32, scale_range=(1.0, 1.0), hflip=True)
    flipped_seeds = 0
    for seed in range(8):
        base_image, base_label = plain(image, label, seeded_generator(seed))
        out_image, out_label = flipping(image, label, seeded_generator(seed))
        flipped = not torch.equal(out_label, base_label)
        flipped_seeds += flipped
        expected = (base_image.flip(-1), base_label.flip(-1)) if flipped else (base_image, base_label)
        assert torch.equal(out_image, expected[0]) and torch.equal(out_label, expected[1])
    assert 0 < flipped_seeds < 8


def test_eval_transform_keeps_label() -> None:
    image, label = _sample(32)
    out_image, out_label = EvalTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image, label)
    torch.testing.assert_close(out_image, image.float() / 127.5 - 1)
    assert torch.equal(out_label, label)


def test_seeded_generator_depends_on_every_key() -> None:
    def draw(*keys: int) -> float:
        return float(torch.rand((), generator=seeded_generator(*keys)))

    assert draw(1, 2, 3) == draw(1, 2, 3)
    assert len({draw(1, 2, 3), draw(1, 3, 2), draw(2, 2, 3), draw(1, 2), draw(1, 2, 3, 0)}) == 5


def test_iteration_sampler_batches_are_pure_functions_of_iteration() -> None:
    full = list(IterationSampler(10, 4, seed=7, total_iterations=12))
    resumed = list(IterationSampler(10, 4, seed=7, start_iteration=5, total_iterations=12))
    assert len(full) == 12 and resumed == full[5:]
    assert all(len(batch) == 4 for batch in full)
    keys = [key for batch in full for key in batch]
    assert [draw for _, draw in keys] == list(range(48))
    for epoch in range(4):  # each epoch visits every index once
        assert sorted(index for index, _ in keys[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    assert [i for i, _ in keys[:10]] != [i for i, _ in keys[10:20]]
    assert IterationSampler(10, 4, seed=8, total_iterations=12).batch(0) != full[0]


def test_sample_view_with_loader_is_reproducible_across_workers() -> None:
    data = SyntheticSegmentation(image_size=32, length=6)
    view = TrainSampleView(data, TrainTransform(24), seed=3)

    def batches(start: int, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sampler = IterationSampler(len(data), 2, seed=3, start_iteration=start, total_iterations=5)
        return list(DataLoader(view, batch_sampler=sampler, num_workers=workers))

    serial, resumed = batches(0, 0), batches(3, 2)
    for (image_a, label_a), (image_b, label_b) in zip(serial[3:], resumed, strict=True):
        assert image_a.shape == (2, 3, 24, 24)
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b)
    index, draw = IterationSampler(len(data), 2, seed=3, total_iterations=5).batch(4)[1]
    image, label = view[(index, draw)]
    assert torch.equal(image, serial[4][0][1]) and torch.equal(label, serial[4][1][1])
