"""CamVid in the SegNet layout: 11 classes, value 11 (void) ignored."""

from __future__ import annotations

from pathlib import Path

from fakd.data.files import FileSegmentation, check_root, check_split, layout_error, lookup_table, pair_labels

SPLITS = ("train", "val", "test")
LAYOUT = "root/{split}/*.png with labels root/{split}annot/*.png"
CLASS_NAMES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]
VOID = 11
LABEL_TABLE = lookup_table({k: k for k in range(len(CLASS_NAMES))}, ignored=(VOID,))  # 12..255: unknown


class CamVid(FileSegmentation):
    """Every `<split>/*.png` with `<split>annot/<same name>`, sorted by name."""

    def __init__(self, root: str | Path | None, split: str = "train", unknown_labels: str = "error") -> None:
        check_split("camvid", split, SPLITS)
        layout = LAYOUT.format(split=split)
        base = check_root("camvid", root, layout)
        images = sorted((base / split).glob("*.png"))
        if not images:
            raise layout_error("camvid", base, split, layout, "0 images")
        labels = base / f"{split}annot"
        pairs = pair_labels("camvid", images, lambda image: labels / image.name)
        super().__init__(pairs, LABEL_TABLE, CLASS_NAMES, dataset="camvid", unknown_labels=unknown_labels)
        self.root, self.split = base, split
