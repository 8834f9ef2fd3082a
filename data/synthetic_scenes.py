"""What a synthetic video shows: each task's pair of twin scenes, drawn from random numbers, and
the pixels of a scene (redvillm.data.synthetic plans, encodes and writes them).

Tasks (the label is the one word the answer hinges on):

    order         two squares appear one after the other       label: colour of the first
    direction     one big square crosses the frame horizontally label: "left" / "right"
    color_change  one square changes colour at mid-video        label: the colour it turns into
    count         one still square flashes two or three times label: "two" / "three"
    still_color   one still square (a control, not temporal)   label: its colour

Honesty. A benchmark of *temporal* understanding must not be solvable from a single frame
or from the time-averaged video. Every video therefore has a twin, drawn from the same
random numbers (background, texture, sizes, positions, colours, question wording), whose
frames are a *permutation* of its own frames and whose label is the opposite one:

    direction     the twin is the same video played backwards
    color_change  the twin shows colour B then A instead of A then B
    count         the twin flashes three times where the video flashes twice: both are on
                  screen for 6u frames in all (u = F // 12), in flashes of 3u or of 2u, so
                  they hold the same frames. At T = 16 from the default 48 frames the
                  sampled frames are equal too; other T can differ by one on-frame.
    order         the twin swaps the two squares' on-screen windows. Each square is on
                  screen for the same number of frames (the first leaves at 3/4 while the
                  second stays to the end); had both stayed to the end, the first square
                  would dominate the time-average and give the answer away.

So any bag-of-frames feature (time-average, histogram, per-frame vote) is identical within
a pair. The control task ``still_color`` is the exception on purpose: its twin is the same still
square in another colour, so it is answerable from any single frame or the time-average, and
shows that a pooling which fails the temporal tasks still sees the video. Which twin gets
which label, and the order of the colours named in a question, are coin flips per pair.

Shapes: F frames, H = W = size pixels, 3 RGB channels, uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]

# Saturated and bright, so that every square is far from every other square colour and
# brighter than any background (backgrounds are dark, channels <= BACKGROUND_MAX + texture).
PALETTE: dict[str, RGB] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 100, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 220),
    "cyan": (40, 210, 220),
}
BACKGROUND_MAX = 80
TEXTURE_AMPLITUDE = 4.0  # per sine wave; three waves stay within +-12 levels

# Side lengths in pixels at a 224-pixel frame, scaled with `size`. Direction of motion needs
# a big square (docs/tiny-models.md); two order squares must fit side by side.
SIDE_RANGE = {"order": (56, 88), "direction": (64, 100), "color_change": (64, 100), "still_color": (64, 100),
              "count": (64, 100)}
REFERENCE_SIZE = 224


@dataclass(frozen=True)
class Square:
    """One square's whole life; everything render_frames needs to draw it."""

    side: int
    start: tuple[int, int]  # top-left (x, y) at frame 0
    end: tuple[int, int]  # top-left (x, y) at the last frame; linear in between
    visible: tuple[int, int]  # on screen for frames [first, stop)
    colours: tuple[RGB, RGB]  # before and after a change (equal when it never changes)
    change: tuple[int, int]  # t < change[0]: colours[0]; t >= change[1]: colours[1]; between: blend


@dataclass(frozen=True)
class Scene:
    """The drawn parameters of one video: render_frames(scene) is a pure function of this."""

    num_frames: int
    size: int
    background: RGB
    waves: tuple[tuple[int, int, float, float], ...]  # texture: (fx, fy, phase, amplitude); () = solid
    squares: tuple[Square, ...]


# ----------------------------------------------------------------------------- rendering


def render_background(scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8: a solid colour plus a few gentle, low-frequency sine waves."""
    size = scene.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size  # (H, W) in [0, 1)
    texture = np.zeros((size, size))
    for fx, fy, phase, amplitude in scene.waves:
        texture += amplitude * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    image = np.asarray(scene.background, np.float64) + texture[..., None]  # (H, W, 3)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def square_at(square: Square, t: int, num_frames: int) -> tuple[int, int, RGB] | None:
    """(x, y, colour) of the square at frame t, or None when it is off screen."""
    first, stop = square.visible
    if not first <= t < stop:
        return None
    # Integer rounding of (start*(F-1-t) + end*t) / (F-1): swapping start and end while
    # reading frames backwards gives bit-identical positions, so reversed twins are exact.
    last = num_frames - 1
    x, y = (
        ((s * (last - t) + e * t) * 2 + last) // (2 * last) for s, e in zip(square.start, square.end)
    )
    before, after = square.colours
    if t < square.change[0]:
        colour = before
    elif t >= square.change[1]:
        colour = after
    else:  # the odd middle frame of color_change: the same blend for a video and its twin
        colour = tuple((b + a) // 2 for b, a in zip(before, after))
    return x, y, colour


def render_frames(scene: Scene) -> np.ndarray:
    """(F, H, W, 3) uint8 frames of one video, a pure function of its drawn parameters."""
    background = render_background(scene)  # (H, W, 3)
    frames = np.repeat(background[None], scene.num_frames, axis=0)  # (F, H, W, 3)
    for t in range(scene.num_frames):
        for square in scene.squares:
            state = square_at(square, t, scene.num_frames)
            if state is not None:
                x, y, colour = state
                frames[t, y : y + square.side, x : x + square.side] = colour
    return frames


# ----------------------------------------------------------------------------- drawing


def _side(rng: np.random.Generator, task: str, size: int) -> int:
    low, high = SIDE_RANGE[task]
    return max(4, int(round(rng.uniform(low, high) * size / REFERENCE_SIZE)))


def _draw_background(rng: np.random.Generator) -> tuple[RGB, tuple]:
    background = tuple(int(c) for c in rng.integers(10, BACKGROUND_MAX + 1, size=3))
    if rng.random() < 0.5:
        return background, ()
    waves = tuple(
        (int(rng.integers(-3, 4)), int(rng.integers(1, 4)), float(rng.uniform(0, 2 * np.pi)),
         float(rng.uniform(0.5, 1.0) * TEXTURE_AMPLITUDE))
        for _ in range(3)
    )
    return background, waves


def _two_colours(rng: np.random.Generator) -> tuple[str, str]:
    names = list(PALETTE)
    i, j = rng.choice(len(names), size=2, replace=False)
    return names[i], names[j]


def _still(side: int, xy: tuple[int, int], visible: tuple[int, int], colour: RGB) -> Square:
    return Square(side, xy, xy, visible, (colour, colour), (0, 0))


def _order_pair(rng, num_frames: int, size: int):
    """Two twins: square 1 first, then square 2 first; same colours, places and durations."""
    side = _side(rng, "order", size)
    names = _two_colours(rng)
    # One square in each half (left/right or top/bottom) so they never overlap.
    half = size // 2
    along = [int(rng.integers(0, half - side + 1)), half + int(rng.integers(0, half - side + 1))]
    across = [int(rng.integers(0, size - side + 1)) for _ in range(2)]
    horizontal = rng.random() < 0.5
    places = [(a, c) if horizontal else (c, a) for a, c in zip(along, across)]
    quarter = num_frames // 4
    early, late = (quarter, num_frames - quarter), (2 * quarter, num_frames)  # equal lengths
    asked = list(names) if rng.random() < 0.5 else list(names[::-1])
    question = f"Which colour appeared first, {asked[0]} or {asked[1]}?"
    twins = []
    for first in (0, 1):
        windows = (early, late) if first == 0 else (late, early)
        squares = tuple(_still(side, places[k], windows[k], PALETTE[names[k]]) for k in (0, 1))
        label = names[first]
        twins.append((label, squares, question, f"The {label} square appeared first."))
    return twins


def _direction_pair(rng, num_frames: int, size: int):
    """Two twins: the same crossing played forwards (moves right) and backwards (left)."""
    side = _side(rng, "direction", size)
    colour = PALETTE[list(PALETTE)[int(rng.integers(len(PALETTE)))]]
    room = size - side
    left_x = int(rng.integers(0, int(0.2 * room) + 1))
    right_x = room - int(rng.integers(0, int(0.2 * room) + 1))
    drift = int(0.1 * size)  # a little vertical wander so rows are not all alike
    y0 = int(rng.integers(0, room + 1))
    y1 = int(np.clip(y0 + rng.integers(-drift, drift + 1), 0, room))
    visible = (0, num_frames)
    rightward = Square(side, (left_x, y0), (right_x, y1), visible, (colour, colour), (0, 0))
    leftward = Square(side, (right_x, y1), (left_x, y0), visible, (colour, colour), (0, 0))
    options = "left or right" if rng.random() < 0.5 else "right or left"
    question = f"Which way does the square move, {options}?"
    return [
        (word, (square,), question, f"The square moves to the {word}.")
        for word, square in (("right", rightward), ("left", leftward))
    ]


def _color_change_pair(rng, num_frames: int, size: int):
    """Two twins: colour A turning into B, and B turning into A, at the same place."""
    side = _side(rng, "color_change", size)
    names = _two_colours(rng)
    xy = tuple(int(v) for v in rng.integers(0, size - side + 1, size=2))
    half = num_frames // 2
    change = (half, num_frames - half)  # an odd middle frame shows the blend of A and B
    question = "What colour does the square turn into?"
    twins = []
    for before, after in (names, names[::-1]):
        colours = (PALETTE[before], PALETTE[after])
        square = Square(side, xy, xy, (0, num_frames), colours, change)
        twins.append((after, (square,), question, f"The square turns {after}."))
    return twins


def _still_color_pair(rng, num_frames: int, size: int):
    """Two twins (a control): the same still square in colour A and in colour B."""
    side = _side(rng, "still_color", size)
    names = _two_colours(rng)
    xy = tuple(int(v) for v in rng.integers(0, size - side + 1, size=2))
    question = "What colour is the square?"
    return [(name, (_still(side, xy, (0, num_frames), PALETTE[name]),), question, f"The square is {name}.")
            for name in names]


def _count_pair(rng, num_frames: int, size: int):
    """Two twins: the same still square flashing twice (3u frames each) and three times (2u each)."""
    side = _side(rng, "count", size)
    colour = PALETTE[list(PALETTE)[int(rng.integers(len(PALETTE)))]]
    xy = tuple(int(v) for v in rng.integers(0, size - side + 1, size=2))
    u = num_frames // 12
    flashes = {"two": [(u, 4 * u), (7 * u, 10 * u)], "three": [(u, 3 * u), (5 * u, 7 * u), (9 * u, 11 * u)]}
    question = "How many times does the square appear?"
    return [(word, tuple(_still(side, xy, window, colour) for window in windows), question,
             f"The square appears {word} times.") for word, windows in flashes.items()]


_PAIR_DRAWERS = {"order": _order_pair, "direction": _direction_pair, "color_change": _color_change_pair,
                 "still_color": _still_color_pair, "count": _count_pair}


def draw_pair(rng: np.random.Generator, task: str, num_frames: int, size: int):
    """A pair of twins of `task` from `rng`: (background, waves, [(label, squares, question, answer)] x 2).

    The draws come in a fixed order (background, then the task's), so a stream gives the same pair."""
    background, waves = _draw_background(rng)
    return background, waves, _PAIR_DRAWERS[task](rng, num_frames, size)
