"""The toy backend's lexicon: every name it knows and its colour (8-bit RGB). Apart from the backend, so that the
command line can offer its names without importing torch."""

TOY_LEXICON: dict[str, tuple[int, int, int]] = {
    # the 19 Cityscapes classes
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70), "wall": (102, 102, 156),
    "fence": (190, 153, 153), "pole": (153, 153, 153), "traffic light": (250, 170, 30),
    "traffic sign": (220, 220, 0), "vegetation": (107, 142, 35), "terrain": (152, 251, 152),
    "sky": (70, 130, 180), "person": (220, 20, 60), "rider": (255, 0, 0), "car": (0, 0, 142),
    "truck": (0, 0, 70), "bus": (0, 60, 100), "train": (0, 80, 100), "motorcycle": (0, 0, 230),
    "bicycle": (119, 11, 32),
    # synonyms of known classes: they must be excluded from the naming dictionary
    "automobile": (0, 0, 142), "tree": (107, 142, 35), "street": (128, 64, 128), "pedestrian": (220, 20, 60),
    # objects that are anomalies for a Cityscapes vocabulary
    "mattress": (255, 255, 255), "tire": (20, 20, 20), "deer": (160, 100, 40), "cardboard box": (200, 140, 90),
    "traffic cone": (255, 120, 0), "rock": (110, 60, 20), "dog": (40, 200, 200),
    # an object no naming dictionary holds: only a user's anomaly vocabulary can name it
    "garden gnome": (0, 255, 0),
}
