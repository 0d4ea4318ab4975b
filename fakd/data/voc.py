"""PASCAL VOC 2012 segmentation, optionally with the SBD augmented training set (VOC-aug)."""

from __future__ import annotations

from pathlib import Path

from fakd.data.files import (
    FileSegmentation,
    check_root,
    check_split,
    layout_error,
    lookup_table,
    pair_labels,
    read_ids,
)
from fakd.errors import UserError

SPLITS = ("train", "val")  # the test split has no public labels
NUM_CLASSES = 21
CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
BOUNDARY = 255  # object boundaries and difficult regions: ignored; 21..254 are unknown
LABEL_TABLE = lookup_table({k: k for k in range(NUM_CLASSES)}, ignored=(BOUNDARY,))
LAYOUT = (
    "root/JPEGImages/<id>.jpg, root/SegmentationClass/<id>.png (palette PNG) and "
    "root/ImageSets/Segmentation/{split}.txt"
)
AUG_DIR = "SegmentationClassAug"
AUG_LIST = "train_aug.txt"


class VOC(FileSegmentation):
    """The images listed in a split file, sorted by id; labels are palette indices (255 = ignore).

    For the train split with `use_sbd`, `SegmentationClassAug/` and `ImageSets/Segmentation/train_aug.txt`
    are used instead when present (both or neither: one without the other is an error).
    """

    def __init__(
        self, root: str | Path | None, split: str = "train", use_sbd: bool = True, unknown_labels: str = "error"
    ) -> None:
        check_split("voc", split, SPLITS)
        layout = LAYOUT.format(split=split)
        base = check_root("voc", root, layout)
        sets = base / "ImageSets" / "Segmentation"
        self.uses_sbd = split == "train" and use_sbd and _has_sbd(base)
        if self.uses_sbd:
            list_file, labels = sets / AUG_LIST, base / AUG_DIR
            _check_disjoint_from_val(list_file, sets / "val.txt")
        else:
            list_file, labels = sets / f"{split}.txt", base / "SegmentationClass"
        if not list_file.is_file():
            raise layout_error("voc", base, split, layout, f"no split list {list_file}")
        ids = sorted(set(read_ids(list_file)))
        if not ids:
            raise layout_error("voc", base, split, layout, f"0 images listed in {list_file}")
        images = [base / "JPEGImages" / f"{name}.jpg" for name in ids]
        missing = next((image for image in images if not image.is_file()), None)
        if missing is not None:
            raise UserError(f"{list_file} lists {missing.stem!r} but {missing} does not exist", key="data.root")
        pairs = pair_labels("voc", images, lambda image: labels / f"{image.stem}.png")
        super().__init__(pairs, LABEL_TABLE, CLASS_NAMES, dataset="voc", unknown_labels=unknown_labels)
        self.root, self.split, self.list_file = base, split, list_file


def _has_sbd(base: Path) -> bool:
    """Whether the SBD augmentation is installed; a half-installed one is an error, not a silent fallback."""
    directory, list_file = base / AUG_DIR, base / "ImageSets" / "Segmentation" / AUG_LIST
    if directory.is_dir() != list_file.is_file():
        present, absent = (directory, list_file) if directory.is_dir() else (list_file, directory)
        raise UserError(
            f"found {present} but not {absent}: the SBD augmentation needs both "
            "(or set data.use_sbd=false to train on SegmentationClass only)",
            key="data.root",
        )
    return directory.is_dir()


def _check_disjoint_from_val(train_list: Path, val_list: Path) -> None:
    """The augmented training list must not contain validation images (that would leak the evaluation set)."""
    if not val_list.is_file():
        return
    shared = sorted(set(read_ids(train_list)) & set(read_ids(val_list)))
    if shared:
        raise UserError(
            f"{train_list} lists {len(shared)} images of the val split (first: {shared[0]!r}); "
            "remove them so that validation stays held out",
            key="data.root",
        )
