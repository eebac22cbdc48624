"""Synthetic room photos for the demo, the tests and the benchmarks, deterministic by seed.

A neutral room (walls, floor, a window: all low-saturation) with a few pieces of furniture in
strong colours. The furniture is drawn into the photo and into its mask by the same code, so a
test knows exactly which pixels the model should have painted over.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.random import Generator, default_rng  # imported here: numpy loads np.random lazily, and not thread-safely


def render_room(seed: int, width: int = 640, height: int = 480) -> bytes:
    """A PNG photo of a furnished room."""
    image, _ = _room(seed, width, height)
    ok, png = cv2.imencode(".png", image)
    assert ok
    return png.tobytes()


def furniture_mask(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    """Which pixels of render_room(seed, width, height) are furniture (bool, height x width)."""
    return _room(seed, width, height)[1]


def _room(seed: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    rng = default_rng(seed)
    horizon = int(height * rng.uniform(0.55, 0.68))
    image = np.empty((height, width, 3), np.float32)

    # Walls and floor: greys and beiges, a soft light falloff, a little sensor noise.
    wall = np.array(rng.uniform([180, 185, 190], [215, 220, 225]), np.float32)  # BGR
    floor = np.array(rng.uniform([120, 135, 150], [150, 160, 170]), np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    image[:horizon] = wall * (0.92 + 0.08 * rows[:horizon] / horizon)
    image[horizon:] = floor * (0.95 + 0.05 * (rows[horizon:] - horizon) / max(1, height - horizon))
    image += rng.normal(0, 1.5, image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)

    cv2.line(image, (0, horizon), (width, horizon), (110, 115, 120), max(2, height // 120))  # baseboard
    wx, wy = int(width * rng.uniform(0.1, 0.6)), int(horizon * 0.15)
    cv2.rectangle(image, (wx, wy), (wx + width // 5, wy + horizon // 3), (235, 235, 230), -1)  # window
    cv2.rectangle(image, (wx, wy), (wx + width // 5, wy + horizon // 3), (150, 150, 150), 3)

    mask = np.zeros((height, width), np.uint8)
    place = _Place(seed, width, height, horizon)
    for index in rng.permutation(len(_FURNITURE))[: rng.integers(2, 5)]:
        colour = _saturated(rng)
        for canvas, paint in ((image, colour), (mask, 255)):
            _FURNITURE[index](canvas, paint, place)
    return image, mask.astype(bool)


def _saturated(rng: Generator) -> tuple[int, int, int]:
    hue = int(rng.integers(0, 180))
    hsv = np.uint8([[[hue, int(rng.integers(190, 256)), int(rng.integers(140, 230))]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


class _Place:
    """Where a piece stands: its own generator, so the photo and the mask get the same geometry."""

    def __init__(self, seed: int, width: int, height: int, horizon: int):
        self.width, self.height, self.horizon = width, height, horizon
        self._seed = seed

    def rng(self, piece: str) -> Generator:
        return default_rng([self._seed, sum(map(ord, piece))])


def _sofa(canvas: np.ndarray, paint: object, p: _Place) -> None:
    rng = p.rng("sofa")
    w, h = int(p.width * rng.uniform(0.3, 0.4)), int(p.height * rng.uniform(0.18, 0.24))
    x, y = int(rng.uniform(0.02, 0.3) * p.width), p.horizon - h // 2
    cv2.rectangle(canvas, (x, y), (x + w, y + h), paint, -1, cv2.LINE_8)  # body
    cv2.rectangle(canvas, (x - 12, y - 10), (x + 12, y + h), paint, -1, cv2.LINE_8)  # arms
    cv2.rectangle(canvas, (x + w - 12, y - 10), (x + w + 12, y + h), paint, -1, cv2.LINE_8)


def _table(canvas: np.ndarray, paint: object, p: _Place) -> None:
    rng = p.rng("table")
    w = int(p.width * rng.uniform(0.15, 0.22))
    x, y = int(rng.uniform(0.45, 0.7) * p.width), p.horizon + int(p.height * 0.12)
    cv2.rectangle(canvas, (x, y), (x + w, y + 12), paint, -1, cv2.LINE_8)  # top
    for leg in (x + 4, x + w - 12):
        cv2.rectangle(canvas, (leg, y), (leg + 8, y + int(p.height * 0.12)), paint, -1, cv2.LINE_8)


def _lamp(canvas: np.ndarray, paint: object, p: _Place) -> None:
    rng = p.rng("lamp")
    x, top = int(rng.uniform(0.75, 0.92) * p.width), int(p.horizon * 0.45)
    shade = np.array([[x - 25, top], [x + 25, top], [x + 35, top + 40], [x - 35, top + 40]], np.int32)
    cv2.fillPoly(canvas, [shade], paint, cv2.LINE_8)
    cv2.rectangle(canvas, (x - 3, top + 40), (x + 3, p.horizon + 20), paint, -1, cv2.LINE_8)


def _rug(canvas: np.ndarray, paint: object, p: _Place) -> None:
    rng = p.rng("rug")
    centre = (int(rng.uniform(0.35, 0.6) * p.width), p.horizon + int((p.height - p.horizon) * 0.6))
    axes = (int(p.width * rng.uniform(0.12, 0.18)), int((p.height - p.horizon) * 0.18))
    cv2.ellipse(canvas, centre, axes, 0, 0, 360, paint, -1, cv2.LINE_8)


_FURNITURE = (_sofa, _table, _lamp, _rug)
