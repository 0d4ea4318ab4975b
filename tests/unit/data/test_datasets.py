"""Datasets on disk (Cityscapes, VOC, ADE20K, CamVid) read from tiny fixture trees in their real layouts, and the
file reading they share (`fakd.data.files`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakd.config import DataConfig, ModelConfig, RunConfig, TeacherConfig
from fakd.data import TransformedDataset, get_dataset
from fakd.data.ade20k import ADE20K
from fakd.data.camvid import CamVid
from fakd.data.cityscapes import Cityscapes
from fakd.data.files import UNKNOWN, lookup_table, reading_table, value_ranges
from fakd.data.transforms import EvalTransform
from fakd.data.voc import VOC
from fakd.errors import UserError
from fakd.train.data import build_splits, eval_loader, train_loader
from fakd.vocab import IGNORE_INDEX

HEIGHT, WIDTH = 8, 12

# One row of stored label values per dataset and the training ids it must map to (written out by hand); every value
# is in the dataset's label table (values outside it are tested in test_safety.py).
CITYSCAPES_ROW = ([7, 8, 11, 26, 33, 0, 1, 6, 24, 9, 30, 31], [0, 1, 2, 13, 18, 255, 255, 255, 11, 255, 255, 16])
VOC_ROW = ([0, 1, 15, 20, 255, 2, 5, 0, 7, 12, 255, 3], [0, 1, 15, 20, 255, 2, 5, 0, 7, 12, 255, 3])
ADE_ROW = ([0, 1, 2, 150, 0, 7, 13, 0, 100, 149, 3, 0], [255, 0, 1, 149, 255, 6, 12, 255, 99, 148, 2, 255])
CAMVID_ROW = ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255])
CAMVID_ROW_HIGH = [12, 255]  # values above 11 (void) are outside CamVid's label table


def label_grid(row: list[int], shift: int) -> np.ndarray:
    """H x W values: row r is `row` rolled by r + shift, so orientation and per-image content are checked."""
    return np.stack([np.roll(np.asarray(row), r + shift) for r in range(HEIGHT)])


def image_array(seed: int) -> np.ndarray:
    """Smooth H x W x 3 uint8 content (smooth so that JPEG keeps it close)."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    channels = [(40 + 20 * seed + 9 * rows + 3 * c * cols) % 256 for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def save_image(path: Path, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image_array(seed)
    options = {"quality": 100} if path.suffix == ".jpg" else {}
    Image.fromarray(array).save(path, **options)
    return array


def save_grey_label(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def save_palette_label(path: Path, indices: np.ndarray) -> None:
    """A real VOC-style label: mode P, palette colours that differ from the indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    palette = [(i * 37 + 11) % 256 for i in range(256)] + [(i * 91 + 5) % 256 for i in range(256)]
    image.putpalette([value for i in range(256) for value in (palette[i], palette[256 + i], (i * 53) % 256)])
    image.save(path)


def check_item(dataset, index: int, image_path: Path, seed: int, expected_label: np.ndarray) -> None:
    image, label = dataset[index]
    assert image.dtype == torch.uint8 and image.shape == (3, HEIGHT, WIDTH)
    assert label.dtype == torch.int64 and label.shape == (HEIGHT, WIDTH)
    written = image_array(seed)
    if image_path.suffix == ".png":
        assert np.array_equal(image.permute(1, 2, 0).numpy(), written)
    else:  # JPEG is lossy: exactly the decoded file, and close to what was written
        with Image.open(image_path) as decoded:
            assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(decoded.convert("RGB")))
        assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - written.astype(int)).max() <= 12
    assert np.array_equal(label.numpy(), expected_label)


# ---------------------------------------------------------------------------------------------- Cityscapes


def make_cityscapes(root: Path) -> dict[str, list[tuple[str, str, int]]]:
    """(city, frame, seed) per split; files are written out of order."""
    splits = {
        "train": [("bochum", "bochum_000000_000313", 2), ("aachen", "aachen_000001_000019", 1),
                  ("aachen", "aachen_000000_000019", 0)],
        "val": [("lindau", "lindau_000000_000019", 4), ("frankfurt", "frankfurt_000000_000294", 3)],
    }
    for split, frames in splits.items():
        for city, frame, seed in frames:
            save_image(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", seed)
            save_grey_label(root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png",
                            label_grid(CITYSCAPES_ROW[0], seed))
    return splits


def test_cityscapes_images_labels_and_splits(tmp_path: Path) -> None:
    splits = make_cityscapes(tmp_path)
    train = get_dataset("cityscapes", str(tmp_path), "train")
    val = get_dataset("cityscapes", str(tmp_path), "val")
    assert isinstance(train, Cityscapes) and (len(train), len(val)) == (3, 2)
    assert train.num_classes == len(train.class_names) == 19 and train.ignore_index == 255
    assert train.class_names[0] == "road" and train.class_names[13] == "car" and train.class_names[18] == "bicycle"
    order = sorted(splits["train"])  # by city, then frame
    assert [pair[0].name for pair in train.pairs] == [f"{frame}_leftImg8bit.png" for _, frame, _ in order]
    for index, (city, frame, seed) in enumerate(order):
        path = tmp_path / "leftImg8bit" / "train" / city / f"{frame}_leftImg8bit.png"
        check_item(train, index, path, seed, label_grid(CITYSCAPES_ROW[1], seed))
    frame_seed = {frame: seed for _, frame, seed in splits["val"]}
    for index, (image_path, _) in enumerate(val.pairs):
        seed = frame_seed[image_path.name.removesuffix("_leftImg8bit.png")]
        check_item(val, index, image_path, seed, label_grid(CITYSCAPES_ROW[1], seed))


# ---------------------------------------------------------------------------------------------------- VOC

VOC_SPLITS = {"train": ["2007_000032", "2008_000002"], "val": ["2007_000033", "2009_000001", "2010_000002"]}
SBD_ONLY = ["2008_000003", "2011_000005"]


def make_voc(root: Path, sbd: bool = False) -> None:
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for seed, name in enumerate(VOC_SPLITS["train"] + VOC_SPLITS["val"] + SBD_ONLY):
        save_image(root / "JPEGImages" / f"{name}.jpg", seed)
        if name not in SBD_ONLY:
            save_palette_label(root / "SegmentationClass" / f"{name}.png", label_grid(VOC_ROW[0], seed))
    for split, names in VOC_SPLITS.items():
        (sets / f"{split}.txt").write_text("\n".join(reversed(names)) + "\n")
    if sbd:
        write_sbd(root)


def write_sbd(root: Path) -> None:
    """SegmentationClassAug (grey PNGs, as distributed) for the train ids and the SBD-only ids."""
    for name in VOC_SPLITS["train"] + SBD_ONLY:
        save_grey_label(root / "SegmentationClassAug" / f"{name}.png", np.full((HEIGHT, WIDTH), 3))
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(SBD_ONLY + VOC_SPLITS["train"]))


def voc_seed(name: str) -> int:
    return (VOC_SPLITS["train"] + VOC_SPLITS["val"] + SBD_ONLY).index(name)


def test_voc_reads_palette_indices_not_colours(tmp_path: Path) -> None:
    make_voc(tmp_path)
    for split in ("train", "val"):
        data = get_dataset("voc", str(tmp_path), split)
        assert isinstance(data, VOC) and [p[0].stem for p in data.pairs] == sorted(VOC_SPLITS[split])
        assert not data.uses_sbd
        for index, name in enumerate(sorted(VOC_SPLITS[split])):
            seed = voc_seed(name)
            check_item(data, index, tmp_path / "JPEGImages" / f"{name}.jpg", seed, label_grid(VOC_ROW[1], seed))
    assert data.num_classes == len(data.class_names) == 21
    assert data.class_names[0] == "background" and data.class_names[20] == "tvmonitor"


def test_voc_uses_sbd_for_train_when_present_and_asked(tmp_path: Path) -> None:
    make_voc(tmp_path, sbd=True)
    augmented = get_dataset("voc", str(tmp_path), "train")  # use_sbd defaults to true
    assert augmented.uses_sbd and len(augmented) == 4
    assert [p[0].stem for p in augmented.pairs] == sorted(VOC_SPLITS["train"] + SBD_ONLY)
    assert all(p[1].parent.name == "SegmentationClassAug" for p in augmented.pairs)
    assert torch.equal(augmented[0][1], torch.full((HEIGHT, WIDTH), 3, dtype=torch.int64))
    plain = get_dataset("voc", str(tmp_path), "train", use_sbd=False)
    assert not plain.uses_sbd and len(plain) == 2
    assert all(p[1].parent.name == "SegmentationClass" for p in plain.pairs)
    val = get_dataset("voc", str(tmp_path), "val", use_sbd=True)
    assert not val.uses_sbd and len(val) == 3


def test_voc_reads_deeplab_style_lists(tmp_path: Path) -> None:
    make_voc(tmp_path, sbd=True)
    lines = [f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png" for name in SBD_ONLY + VOC_SPLITS["train"]]
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(lines) + "\n\n")
    data = get_dataset("voc", str(tmp_path), "train")
    assert [p[0].stem for p in data.pairs] == sorted(VOC_SPLITS["train"] + SBD_ONLY)


def test_voc_sbd_must_be_complete_and_exclude_val(tmp_path: Path) -> None:
    make_voc(tmp_path, sbd=True)
    aug_list = tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt"
    aug_list.write_text(aug_list.read_text() + "\n2009_000001\n")
    with pytest.raises(UserError, match="1 images of the val split.*2009_000001") as info:
        get_dataset("voc", str(tmp_path), "train")
    assert info.value.key == "data.root"
    aug_list.unlink()
    with pytest.raises(UserError, match="train_aug.txt.*use_sbd=false"):
        get_dataset("voc", str(tmp_path), "train")
    assert len(get_dataset("voc", str(tmp_path), "train", use_sbd=False)) == 2


def test_voc_listed_files_must_exist(tmp_path: Path) -> None:
    make_voc(tmp_path)
    (tmp_path / "JPEGImages" / "2009_000001.jpg").unlink()
    with pytest.raises(UserError, match="lists '2009_000001'.*2009_000001.jpg does not exist"):
        get_dataset("voc", str(tmp_path), "val")
    (tmp_path / "SegmentationClass" / "2008_000002.png").unlink()
    with pytest.raises(UserError, match="2008_000002.jpg has no label file"):
        get_dataset("voc", str(tmp_path), "train")


def test_colour_label_files_are_rejected(tmp_path: Path) -> None:
    make_voc(tmp_path)
    label = tmp_path / "SegmentationClass" / "2007_000032.png"
    with Image.open(label) as image:
        image.convert("RGB").save(label)
    data = get_dataset("voc", str(tmp_path), "train")
    with pytest.raises(UserError, match="2007_000032.png has mode RGB"):
        data[0]


# ------------------------------------------------------------------------------------------------- ADE20K


def make_ade20k(root: Path) -> dict[str, list[str]]:
    names = {"training": ["ADE_train_00000002", "ADE_train_00000001", "ADE_train_00000003"],
             "validation": ["ADE_val_00000001", "ADE_val_00000002"]}
    for folder, stems in names.items():
        for seed, stem in enumerate(stems):
            save_image(root / "images" / folder / f"{stem}.jpg", seed)
            save_grey_label(root / "annotations" / folder / f"{stem}.png", label_grid(ADE_ROW[0], seed))
    return names


def test_ade20k_labels_shift_down_and_zero_is_ignored(tmp_path: Path) -> None:
    names = make_ade20k(tmp_path)
    for split, folder in (("train", "training"), ("val", "validation")):
        data = get_dataset("ade20k", str(tmp_path), split)
        assert isinstance(data, ADE20K) and [p[0].stem for p in data.pairs] == sorted(names[folder])
        for index, stem in enumerate(sorted(names[folder])):
            seed = names[folder].index(stem)
            path = tmp_path / "images" / folder / f"{stem}.jpg"
            check_item(data, index, path, seed, label_grid(ADE_ROW[1], seed))
    assert data.num_classes == len(data.class_names) == len(set(data.class_names)) == 150
    assert (data.class_names[0], data.class_names[12], data.class_names[149]) == ("wall", "person", "flag")


# ------------------------------------------------------------------------------------------------- CamVid


def make_camvid(root: Path) -> dict[str, list[str]]:
    names = {"train": ["0016E5_07959", "0001TP_006690", "Seq05VD_f00000"], "val": ["0016E5_07965", "0001TP_009000"],
             "test": ["Seq05VD_f05100", "0001TP_008550"]}
    for split, stems in names.items():
        for seed, stem in enumerate(stems):
            save_image(root / split / f"{stem}.png", seed)
            save_grey_label(root / f"{split}annot" / f"{stem}.png", label_grid(CAMVID_ROW[0], seed))
    return names


def test_camvid_train_val_test(tmp_path: Path) -> None:
    names = make_camvid(tmp_path)
    for split in ("train", "val", "test"):
        data = get_dataset("camvid", str(tmp_path), split)
        assert isinstance(data, CamVid) and len(data) == len(names[split])
        for index, stem in enumerate(sorted(names[split])):
            seed = names[split].index(stem)
            check_item(data, index, tmp_path / split / f"{stem}.png", seed, label_grid(CAMVID_ROW[1], seed))
    assert data.num_classes == len(data.class_names) == 11
    assert (data.class_names[0], data.class_names[10]) == ("Sky", "Bicyclist")
    high = np.tile(CAMVID_ROW_HIGH, (HEIGHT, WIDTH // 2))
    save_grey_label(tmp_path / "testannot" / "0001TP_008550.png", high)
    with pytest.raises(UserError, match="0001TP_008550.png holds values outside the camvid label table: 12, 255"):
        get_dataset("camvid", str(tmp_path), "test")[0]
    ignoring = get_dataset("camvid", str(tmp_path), "test", unknown_labels="ignore")
    assert torch.equal(ignoring[0][1], torch.full((HEIGHT, WIDTH), 255))


# ------------------------------------------------------------------------------------------------- errors

MAKERS = {"cityscapes": make_cityscapes, "voc": make_voc, "ade20k": make_ade20k, "camvid": make_camvid}
EXPECTED_LAYOUT = {
    "cityscapes": "expected root/leftImg8bit/train/<city>/*_leftImg8bit.png",
    "voc": "expected root/JPEGImages/<id>.jpg",
    "ade20k": "expected root/images/training/*.jpg",
    "camvid": "expected root/train/*.png with labels root/trainannot/*.png",
}
FIRST_LABEL = {
    "cityscapes": "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
    "voc": "SegmentationClass/2007_000032.png",
    "ade20k": "annotations/training/ADE_train_00000001.png",
    "camvid": "trainannot/0001TP_006690.png",
}


@pytest.mark.parametrize("name", MAKERS)
def test_missing_root_names_the_layout(tmp_path: Path, name: str) -> None:
    for root in (str(tmp_path / "missing"), None):
        with pytest.raises(UserError) as info:
            get_dataset(name, root, "train")
        assert info.value.key == "data.root" and EXPECTED_LAYOUT[name].removeprefix("expected ") in info.value.message


@pytest.mark.parametrize("name", MAKERS)
def test_wrong_layout_names_expected_and_found(tmp_path: Path, name: str) -> None:
    (tmp_path / "downloads").mkdir()
    (tmp_path / "README.txt").write_text("not a dataset")
    with pytest.raises(UserError) as info:
        get_dataset(name, str(tmp_path), "train")
    message = info.value.message
    assert info.value.key == "data.root" and EXPECTED_LAYOUT[name] in message
    assert "README.txt, downloads/" in message
    assert ("no split list" if name == "voc" else "0 images") in message


@pytest.mark.parametrize("name", MAKERS)
def test_image_without_label_names_the_first_one(tmp_path: Path, name: str) -> None:
    MAKERS[name](tmp_path)
    missing = tmp_path / FIRST_LABEL[name]
    missing.unlink()
    with pytest.raises(UserError, match=f"has no label file \\(expected {missing}\\)") as info:
        get_dataset(name, str(tmp_path), "train")
    assert info.value.key == "data.root"


@pytest.mark.parametrize(("name", "split", "accepted"), [
    ("cityscapes", "test", "train, val"), ("voc", "trainval", "train, val"), ("ade20k", "test", "train, val"),
    ("camvid", "training", "train, val, test"),
])
def test_unknown_split_lists_the_accepted_ones(tmp_path: Path, name: str, split: str, accepted: str) -> None:
    with pytest.raises(UserError, match=f"accepted: {accepted}$") as info:
        get_dataset(name, str(tmp_path), split)
    assert info.value.key == "data.split"


def test_unknown_option_is_a_user_error(tmp_path: Path) -> None:
    make_camvid(tmp_path)
    expected = "unknown option 'use_sbd' for the camvid dataset; accepted: unknown_labels$"
    with pytest.raises(UserError, match=expected) as info:
        get_dataset("camvid", str(tmp_path), "train", use_sbd=True)
    assert info.value.key == "data.use_sbd"


def test_image_and_label_of_different_sizes(tmp_path: Path) -> None:
    make_camvid(tmp_path)
    save_grey_label(tmp_path / "valannot" / "0001TP_009000.png", np.zeros((HEIGHT, WIDTH + 1)))
    with pytest.raises(UserError, match=r"0001TP_009000.png is \(8, 12\) but its label .* is \(8, 13\)"):
        get_dataset("camvid", str(tmp_path), "val")[0]


# ---------------------------------------------------------------------------------------- with the trainer


def test_transform_and_trainer_splits_on_a_dataset_on_disk(tmp_path: Path) -> None:
    make_cityscapes(tmp_path)
    data = get_dataset("cityscapes", str(tmp_path), "val", transform=EvalTransform())
    assert isinstance(data, TransformedDataset) and data.num_classes == 19
    assert data[0][0].dtype == torch.float32 and data[0][1].dtype == torch.int64
    cfg = RunConfig(
        data=DataConfig(name="cityscapes", root=str(tmp_path), image_size=16, holdout_fraction=0.3),
        teacher=TeacherConfig(backbone="test_resnet"), student=ModelConfig(backbone="test_resnet"), split="val",
    )
    splits = build_splits(cfg)
    assert (len(splits.train), len(splits.evaluation), splits.num_classes) == (3, 2, 19)
    images, labels = next(iter(train_loader(cfg, splits.train, total_iters=1, start_iteration=0)))
    assert images.shape == (8, 3, 16, 16) and labels.shape == (8, 16, 16)
    assert set(labels.unique().tolist()) <= {0, 1, 2, 11, 13, 16, 18, 255}
    search = build_splits(cfg.model_copy(update={"split": "holdout"}))
    assert (len(search.train), len(search.evaluation)) == (2, 1)
    assert [tuple(b[1].shape) for b in eval_loader(cfg, splits.evaluation)] == [(1, HEIGHT, WIDTH)] * 2


def test_label_tables_map_stored_values_and_name_the_rest_compactly():
    table = lookup_table({7: 0, 8: 1}, ignored=[0, 1])
    assert table.shape == (256,) and (table[7], table[8], table[0], table[1]) == (0, 1, IGNORE_INDEX, IGNORE_INDEX)
    assert table[9] == UNKNOWN and reading_table(table, "error") is table
    assert reading_table(table, "ignore")[9] == IGNORE_INDEX and reading_table(table, "ignore")[7] == 0
    with pytest.raises(UserError, match="unknown_labels must be one of error, ignore"):
        reading_table(table, "drop")
    assert value_ranges([255, 3, 0, 1, 2, 5]) == "0-3, 5, 255"
