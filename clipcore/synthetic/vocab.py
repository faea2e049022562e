"""Words for ShapeWorld dictionaries (KDPL-CA class-agnostic prompts, SpectralGCD concepts).

A real concept dictionary mixes a few relevant names with many irrelevant ones; the distractors
below play the irrelevant part: plausible everyday concepts that never appear in the world.
"""
from __future__ import annotations

from clipcore.synthetic.world import BACKGROUNDS, COLOURS, SHAPES, SIZES, TEXTURES, ShapeWorld

ATTRIBUTE_WORDS: tuple[str, ...] = (
    tuple(COLOURS) + SHAPES + SIZES + TEXTURES + tuple(f"{b} background" for b in BACKGROUNDS))

DISTRACTOR_WORDS: tuple[str, ...] = (
    # animals
    "cat", "dog", "horse", "cow", "sheep", "goat", "pig", "rabbit", "mouse", "rat", "squirrel",
    "fox", "wolf", "bear", "lion", "tiger", "leopard", "cheetah", "elephant", "giraffe", "zebra",
    "hippo", "rhino", "camel", "kangaroo", "koala", "panda", "monkey", "gorilla", "deer", "moose",
    "otter", "beaver", "seal", "walrus", "dolphin", "whale", "shark", "octopus", "jellyfish",
    "crab", "lobster", "snail", "frog", "turtle", "lizard", "snake", "crocodile", "eagle", "owl",
    "parrot", "penguin", "flamingo", "swan", "duck", "goose", "pigeon", "sparrow", "hummingbird",
    "butterfly", "bee", "ant", "spider", "beetle", "dragonfly",
    # food
    "apple", "banana", "orange juice", "grape", "strawberry", "cherry", "lemon", "pineapple",
    "watermelon", "peach", "pear", "mango", "avocado", "tomato", "potato", "carrot", "broccoli",
    "cabbage", "onion", "garlic", "mushroom", "corn", "bread", "baguette", "croissant", "bagel",
    "pizza", "burger", "sandwich", "hot dog", "taco", "sushi", "noodles", "spaghetti", "rice",
    "soup", "salad", "steak", "omelette", "pancake", "waffle", "donut", "cupcake", "cookie",
    "chocolate", "ice cream", "cheese", "yogurt", "coffee", "tea",
    # vehicles
    "car", "truck", "bus", "van", "taxi", "motorcycle", "bicycle", "scooter", "train", "tram",
    "subway", "airplane", "helicopter", "rocket", "sailboat", "canoe", "ship", "submarine",
    "tractor", "ambulance", "fire engine", "skateboard",
    # objects
    "chair", "table", "sofa", "bed", "lamp", "clock", "mirror", "vase", "teapot", "cup", "bowl",
    "plate", "fork", "spoon", "knife", "bottle", "kettle", "toaster", "microwave", "refrigerator",
    "television", "laptop", "keyboard", "telephone", "camera", "headphones", "umbrella",
    "backpack", "suitcase", "wallet", "shoe", "boot", "hat", "scarf", "glove", "jacket", "dress",
    "necklace", "ring binder", "book", "pencil", "scissors", "hammer", "screwdriver", "wrench",
    "ladder", "bucket", "broom", "candle", "guitar", "piano", "violin", "drum", "trumpet",
    "football", "tennis racket", "kite", "balloon", "teddy bear",
    # places and scenes
    "beach", "forest", "mountain", "desert", "river", "lake", "waterfall", "glacier", "volcano",
    "meadow", "jungle", "canyon", "island", "city street", "bridge", "castle", "lighthouse",
    "church", "skyscraper", "barn", "kitchen", "bedroom", "library", "classroom", "office",
    "stadium", "airport", "harbour", "garden", "playground",
)


def demo_dictionary(world: ShapeWorld | None = None) -> list[str]:
    """World class names, then attribute words, then distractors; no duplicates, order kept."""
    world = world or ShapeWorld()
    return list(dict.fromkeys([*world.classnames, *ATTRIBUTE_WORDS, *DISTRACTOR_WORDS]))
