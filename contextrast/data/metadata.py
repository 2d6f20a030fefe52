"""Label tables of the datasets: class names, palettes, raw-label → train-id maps.

Facts from the datasets' own definitions (cityscapesScripts' ``labels.py``, SegNet's CamVid
split, the PASCAL-Context 59/60 lists, COCO-Stuff-164k and ADEChallengeData2016 as prepared
by mmsegmentation). Palettes without an official definition are generated.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# ---------------------------------------------------------------------------- Cityscapes

#: (name, labelId, trainId, category) of every Cityscapes label; trainId 255 is ignored.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255, "void"),
    ("ego vehicle", 1, 255, "void"),
    ("rectification border", 2, 255, "void"),
    ("out of roi", 3, 255, "void"),
    ("static", 4, 255, "void"),
    ("dynamic", 5, 255, "void"),
    ("ground", 6, 255, "void"),
    ("road", 7, 0, "flat"),
    ("sidewalk", 8, 1, "flat"),
    ("parking", 9, 255, "flat"),
    ("rail track", 10, 255, "flat"),
    ("building", 11, 2, "construction"),
    ("wall", 12, 3, "construction"),
    ("fence", 13, 4, "construction"),
    ("guard rail", 14, 255, "construction"),
    ("bridge", 15, 255, "construction"),
    ("tunnel", 16, 255, "construction"),
    ("pole", 17, 5, "object"),
    ("polegroup", 18, 255, "object"),
    ("traffic light", 19, 6, "object"),
    ("traffic sign", 20, 7, "object"),
    ("vegetation", 21, 8, "nature"),
    ("terrain", 22, 9, "nature"),
    ("sky", 23, 10, "sky"),
    ("person", 24, 11, "human"),
    ("rider", 25, 12, "human"),
    ("car", 26, 13, "vehicle"),
    ("truck", 27, 14, "vehicle"),
    ("bus", 28, 15, "vehicle"),
    ("caravan", 29, 255, "vehicle"),
    ("trailer", 30, 255, "vehicle"),
    ("train", 31, 16, "vehicle"),
    ("motorcycle", 32, 17, "vehicle"),
    ("bicycle", 33, 18, "vehicle"),
)
CITYSCAPES_CLASSES = tuple(name for name, _, train, _ in CITYSCAPES_LABELS if train != 255)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
#: labelId → trainId for every labelId (0–33).
CITYSCAPES_LABEL_TO_TRAIN = {label: train for _, label, train, _ in CITYSCAPES_LABELS}
#: trainId → labelId (index = trainId), to write predictions for the official evaluation.
CITYSCAPES_TRAIN_TO_LABEL = tuple(
    label for _, label, train, _ in sorted(CITYSCAPES_LABELS, key=lambda x: x[2]) if train != 255
)
#: category name per trainId (Cityscapes' category mIoU / iIoU).
CITYSCAPES_CATEGORIES = tuple(cat for _, _, train, cat in CITYSCAPES_LABELS if train != 255)
#: trainIds of the 8 classes with instances (iIoU).
CITYSCAPES_INSTANCE_CLASSES = (11, 12, 13, 14, 15, 16, 17, 18)

# ---------------------------------------------------------------------------- CamVid (SegNet)

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
#: SegNet's annotation value of "unlabelled" (void), ignored.
CAMVID_VOID = 11

# ---------------------------------------------------------------------------- PASCAL-Context

PASCAL_CONTEXT_CLASSES_60 = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "table", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
    "sofa", "train", "tvmonitor", "bag", "bed", "bench", "book", "building", "cabinet",
    "ceiling", "cloth", "computer", "cup", "door", "fence", "floor", "flower", "food", "grass",
    "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform", "sign", "plate",
    "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedclothes", "track", "tree",
    "truck", "wall", "water", "window", "wood",
)  # fmt: skip
PASCAL_CONTEXT_CLASSES_59 = PASCAL_CONTEXT_CLASSES_60[1:]

# ---------------------------------------------------------------------------- COCO-Stuff-164k

COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush",
    "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth",
    "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt",
    "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete",
    "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
#: Raw COCO-Stuff "stuffthingmaps" values (COCO id − 1) that name no class: 11 unused ids.
COCO_STUFF_UNUSED_RAW = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

# ---------------------------------------------------------------------------- ADE20K

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book",
    "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip

# ---------------------------------------------------------------------------- digits

DIGITS_CLASSES = ("background", *[str(d) for d in range(10)])


def generated_palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bits of the class id spread over R, G, B), (N, 3) uint8."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        value, colour = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[index] = colour
    return palette


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """Raw 8-bit label value → class id; -1 marks a value the dataset does not define."""
    table = np.full(256, -1, dtype=np.int64)
    for raw, mapped in mapping.items():
        table[raw] = mapped
    return table


CITYSCAPES_LUT = lookup_table({**CITYSCAPES_LABEL_TO_TRAIN, 255: IGNORE_INDEX})
CITYSCAPES_TRAIN_ID_LUT = lookup_table({**{i: i for i in range(19)}, 255: IGNORE_INDEX})
CAMVID_LUT = lookup_table({**{i: i for i in range(11)}, CAMVID_VOID: IGNORE_INDEX, 255: 255})
PASCAL_CONTEXT_59_LUT = lookup_table({0: IGNORE_INDEX, **{i: i - 1 for i in range(1, 60)}})
PASCAL_CONTEXT_60_LUT = lookup_table({**{i: i for i in range(60)}, 255: IGNORE_INDEX})
COCO_STUFF_LUT = lookup_table({**{i: i for i in range(171)}, 255: IGNORE_INDEX})
COCO_STUFF_RAW_LUT = lookup_table(
    {
        **{
            raw: train
            for train, raw in enumerate(r for r in range(182) if r not in COCO_STUFF_UNUSED_RAW)
        },
        255: IGNORE_INDEX,
    }
)
ADE20K_LUT = lookup_table({0: IGNORE_INDEX, **{i: i - 1 for i in range(1, 151)}})
