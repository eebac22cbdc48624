"""The demo model: real image operations on the CPU, standing where a GPU model server would.

remove_furniture: find the furniture (strongly coloured against a neutral room), then inpaint the
room back in where it stood. upscale_2x: bicubic ×2 with a light unsharp mask. The agent treats it
like any model: bytes in, PNG bytes out, `BadImage` when the input is not a usable image.
"""

from __future__ import annotations

import cv2
import numpy as np

# Furniture is saturated; walls, floors and windows are not. Well between the two.
SATURATION_THRESHOLD = 120
MASK_GROW_PX = 3  # cover the edges the threshold misses
INPAINT_RADIUS_PX = 5


class BadImage(Exception):
    """The input cannot be decoded: no GPU will do better, the job should fail at once."""


def runs(service: str) -> bool:
    return service in _SERVICES


def run(service: str, image: bytes) -> bytes:
    steps = _SERVICES.get(service)
    if steps is None:
        raise ValueError(f"this model server does not run {service!r}")
    pixels = decode(image)
    for step in steps:
        pixels = step(pixels)
    ok, png = cv2.imencode(".png", pixels)
    if not ok:
        raise RuntimeError("could not encode the result as PNG")
    return png.tobytes()


def decode(image: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR) if image else None
    if pixels is None:
        raise BadImage(f"the input ({len(image)} bytes) does not decode as an image")
    return pixels


def detect_furniture(pixels: np.ndarray) -> np.ndarray:
    """A 0/255 mask of the furniture."""
    saturation = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)[..., 1]
    mask = np.where(saturation > SATURATION_THRESHOLD, 255, 0).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return cv2.dilate(mask, kernel, iterations=MASK_GROW_PX)


def remove_furniture(pixels: np.ndarray) -> np.ndarray:
    mask = detect_furniture(pixels)
    if not mask.any():
        return pixels
    return cv2.inpaint(pixels, mask, INPAINT_RADIUS_PX, cv2.INPAINT_TELEA)


def upscale_2x(pixels: np.ndarray) -> np.ndarray:
    larger = cv2.resize(pixels, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    blurred = cv2.GaussianBlur(larger, (0, 0), sigmaX=1.2)
    return cv2.addWeighted(larger, 1.4, blurred, -0.4, 0)


_SERVICES = {
    "remove_furniture": (remove_furniture,),
    "upscale_2x": (upscale_2x,),
}
