"""Synthetic image QA: the pictures and questions a tiny image LLM of our own learns from.

The images come from the same world as the synthetic videos (redvillm.data.synthetic_scenes): bright
shapes from the same palette on dark, gently textured backgrounds. So the image LLM learns
colours, shapes, places and counts there, and the video stage can reuse that alignment without
ever seeing an image-QA sample (the paper's premise).

Question kinds (answer: one word, or a short caption), in English and in Chinese:

    colour    "What colour is the square?"                  "red"       / "红色"
    shape     "What shape is the blue object?"              "circle"    / "圆形"
    position  "Is the green triangle on the left or right?" "left"      / "左边"
    count     "How many shapes are there?"                  "two"       / "两个"
    caption   "Describe the image."                         "a red square on the left"

Every image is a pure function of (seed, index): the same seed gives the same set.
Shapes: H = W = size pixels, 3 RGB channels, uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from redvillm.data.synthetic_scenes import BACKGROUND_MAX, PALETTE, TEXTURE_AMPLITUDE

SHAPES = ("square", "circle", "triangle")
KINDS = ("colour", "shape", "position", "count", "caption")
NUMBERS = ("one", "two", "three")
COLOUR_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "magenta": "品红色", "cyan": "青色"}
SHAPE_ZH = {"square": "方块", "circle": "圆形", "triangle": "三角形"}
SIDE_ZH = {"left": "左边", "right": "右边"}
NUMBER_ZH = {"one": "一个", "two": "两个", "three": "三个"}


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    x: int  # top-left corner
    y: int
    side: int
    frame_size: int

    @property
    def place(self) -> str:
        return "left" if self.x + self.side / 2 < self.frame_size / 2 else "right"


@dataclass(frozen=True)
class ImageQA:
    image: np.ndarray  # (H, W, 3) uint8
    question: str
    answer: str
    kind: str
    language: str  # "en" or "zh"


def draw_shape(image: np.ndarray, thing: Thing) -> None:
    """Paint one filled shape into image (H, W, 3) in place."""
    yy, xx = np.mgrid[0 : thing.side, 0 : thing.side]
    half = (thing.side - 1) / 2
    if thing.shape == "square":
        mask = np.ones((thing.side, thing.side), bool)
    elif thing.shape == "circle":
        mask = (yy - half) ** 2 + (xx - half) ** 2 <= (half + 0.5) ** 2
    else:  # triangle, apex up
        mask = np.abs(xx - half) <= yy / 2 + 0.5
    region = image[thing.y : thing.y + thing.side, thing.x : thing.x + thing.side]
    region[mask] = PALETTE[thing.colour]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    colour = rng.integers(10, BACKGROUND_MAX + 1, size=3).astype(np.float64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    texture = np.zeros((size, size))
    if rng.random() < 0.5:
        for _ in range(3):
            fx, fy = rng.integers(-3, 4), rng.integers(1, 4)
            texture += rng.uniform(0.5, 1.0) * TEXTURE_AMPLITUDE * np.sin(
                2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
    return np.clip(np.rint(colour + texture[..., None]), 0, 255).astype(np.uint8)


def _things(rng: np.random.Generator, size: int, count: int) -> list[Thing]:
    """`count` non-overlapping shapes of distinct colours, each in its own column band."""
    colours = rng.choice(list(PALETTE), size=count, replace=False)
    band = size // count
    side_max = min(band, size // 2) - 2
    things = []
    for i, colour in enumerate(colours):
        side = int(rng.integers(max(6, side_max * 2 // 3), side_max + 1))
        x = i * band + int(rng.integers(0, band - side + 1))
        if count == 1:  # a lone shape sits clearly in one half: "left or right" has an answer
            x = int(rng.integers(0, size // 2 - side // 2 - size // 10 + 1))
            x = x if rng.random() < 0.5 else size - side - x
        y = int(rng.integers(0, size - side + 1))
        things.append(Thing(str(rng.choice(SHAPES)), str(colour), x, y, side, size))
    order = rng.permutation(count)  # bands fix left-to-right; shuffle which thing is listed first
    return [things[i] for i in order]


def sample(seed: int, index: int, size: int = 64, chinese_share: float = 0.3) -> ImageQA:
    """The index-th (image, question, answer) of the set drawn with `seed`."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[int(rng.integers(len(KINDS)))]
    count = int(rng.integers(1, 4)) if kind == "count" else (1 if kind == "caption" else int(rng.integers(1, 3)))
    image = _background(rng, size)
    things = _things(rng, size, count)
    for thing in things:
        draw_shape(image, thing)
    zh = rng.random() < chinese_share and kind != "caption"
    question, answer = _ask(kind, things, zh, rng)
    return ImageQA(image, question, answer, kind, "zh" if zh else "en")


def _ask(kind: str, things: list[Thing], zh: bool, rng: np.random.Generator) -> tuple[str, str]:
    target = things[0]
    if kind == "colour":
        # One shape: name it; two: say where (each sits in its own half of the frame).
        if zh:
            name = SHAPE_ZH[target.shape] if len(things) == 1 else f"{SIDE_ZH[target.place]}的形状"
            return f"这个{name}是什么颜色？" if len(things) == 1 else f"{name}是什么颜色？", COLOUR_ZH[target.colour]
        name = f"the {target.shape}" if len(things) == 1 else f"the shape on the {target.place}"
        return f"What colour is {name}?", target.colour
    if kind == "shape":
        if zh:
            return f"{COLOUR_ZH[target.colour]}的东西是什么形状？", SHAPE_ZH[target.shape]
        return f"What shape is the {target.colour} object?", target.shape
    if kind == "position":
        if zh:
            return f"{COLOUR_ZH[target.colour]}的{SHAPE_ZH[target.shape]}在左边还是右边？", SIDE_ZH[target.place]
        options = "left or right" if rng.random() < 0.5 else "right or left"
        return f"Is the {target.colour} {target.shape} on the {options}?", target.place
    if kind == "count":
        number = NUMBERS[len(things) - 1]
        return ("有几个形状？", NUMBER_ZH[number]) if zh else ("How many shapes are there?", number)
    return "Describe the image.", f"a {target.colour} {target.shape} on the {target.place}"
