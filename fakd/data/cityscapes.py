"""Cityscapes (fine annotations): labelIds mapped to the 19 official training ids."""

from __future__ import annotations

from pathlib import Path

from fakd.data.files import FileSegmentation, check_root, check_split, layout_error, lookup_table, pair_labels

SPLITS = ("train", "val")  # the test split's public labels are placeholders
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
LAYOUT = f"root/leftImg8bit/{{split}}/<city>/*{IMAGE_SUFFIX} with labels root/gtFine/{{split}}/<city>/*{LABEL_SUFFIX}"

# (labelId, name) of each training class, in training-id order (the official Cityscapes label table).
TRAIN_CLASSES: tuple[tuple[int, str], ...] = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"),
    (19, "traffic light"), (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"),
    (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"),
    (32, "motorcycle"), (33, "bicycle"),
)
CLASS_NAMES = [name for _, name in TRAIN_CLASSES]
NUM_LABEL_IDS = 34  # labelIds 0..33; the ids that are not training classes are ignored, 34..255 are unknown
LABEL_TABLE = lookup_table(
    {label_id: train_id for train_id, (label_id, _) in enumerate(TRAIN_CLASSES)}, ignored=range(NUM_LABEL_IDS)
)


class Cityscapes(FileSegmentation):
    """Every `*_leftImg8bit.png` of a split with its `*_gtFine_labelIds.png`, sorted by city and name."""

    def __init__(self, root: str | Path | None, split: str = "train", unknown_labels: str = "error") -> None:
        check_split("cityscapes", split, SPLITS)
        layout = LAYOUT.format(split=split)
        base = check_root("cityscapes", root, layout)
        images = sorted((base / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise layout_error("cityscapes", base, split, layout, "0 images")
        labels = base / "gtFine" / split

        def label_of(image: Path) -> Path:
            return labels / image.parent.name / (image.name.removesuffix(IMAGE_SUFFIX) + LABEL_SUFFIX)

        pairs = pair_labels("cityscapes", images, label_of)
        super().__init__(pairs, LABEL_TABLE, CLASS_NAMES, dataset="cityscapes", unknown_labels=unknown_labels)
        self.root, self.split = base, split
