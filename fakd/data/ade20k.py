"""ADE20K (SceneParsing, ADEChallengeData2016): 150 classes, annotation 0 ("other") ignored."""

from __future__ import annotations

from pathlib import Path

from fakd.data.files import FileSegmentation, check_root, check_split, layout_error, lookup_table, pair_labels

SPLIT_DIRS = {"train": "training", "val": "validation"}  # the test release has no annotations
LAYOUT = "root/images/{folder}/*.jpg with labels root/annotations/{folder}/*.png (ADEChallengeData2016)"

# The 150 SceneParsing classes in annotation order (value k is class k - 1), first name of each synonym list.
CLASS_NAMES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]
# 0 ("other") → ignore; 151..255: unknown
LABEL_TABLE = lookup_table({k: k - 1 for k in range(1, len(CLASS_NAMES) + 1)}, ignored=(0,))


class ADE20K(FileSegmentation):
    """Every `images/<folder>/*.jpg` of a split with `annotations/<folder>/<same name>.png`, sorted by name."""

    def __init__(self, root: str | Path | None, split: str = "train", unknown_labels: str = "error") -> None:
        check_split("ade20k", split, tuple(SPLIT_DIRS))
        folder = SPLIT_DIRS[split]
        layout = LAYOUT.format(folder=folder)
        base = check_root("ade20k", root, layout)
        images = sorted((base / "images" / folder).glob("*.jpg"))
        if not images:
            raise layout_error("ade20k", base, split, layout, "0 images")
        labels = base / "annotations" / folder
        pairs = pair_labels("ade20k", images, lambda image: labels / f"{image.stem}.png")
        super().__init__(pairs, LABEL_TABLE, CLASS_NAMES, dataset="ade20k", unknown_labels=unknown_labels)
        self.root, self.split = base, split
