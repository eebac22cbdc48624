"""The generated rooms and the demo model: the furniture they draw is the furniture it removes."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from spillway.agent import model
from spillway.rooms import furniture_mask, render_room


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)


def test_rooms_are_deterministic_by_seed() -> None:
    assert render_room(4) == render_room(4)
    assert render_room(4) != render_room(5)
    assert decode(render_room(4, 320, 200)).shape == (200, 320, 3)


def test_rooms_can_be_rendered_from_many_threads_at_once() -> None:
    """numpy loads `np.random` on its first use, and two threads using it first at once can recurse in that
    import (a benchmark's uploads failed with RecursionError): importing rooms loads it, before any thread."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, spillway.rooms; print('numpy.random' in sys.modules)"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "True"


def test_the_mask_is_exactly_the_saturated_furniture() -> None:
    for seed in range(10):
        saturation = cv2.cvtColor(decode(render_room(seed)).astype(np.uint8), cv2.COLOR_BGR2HSV)[..., 1]
        mask = furniture_mask(seed)
        assert 0.01 < mask.mean() < 0.5, "some furniture, and some room"
        assert saturation[mask].min() > model.SATURATION_THRESHOLD > saturation[~mask].max()


@pytest.mark.parametrize("seed", range(21))
def test_remove_furniture_paints_over_the_furniture_and_only_there(seed: int) -> None:
    before = render_room(seed)
    changed = np.abs(decode(model.run("remove_furniture", before)) - decode(before)).sum(axis=2)
    mask = furniture_mask(seed)
    assert changed[mask].mean() > 40
    far = cv2.dilate(mask.astype(np.uint8), np.ones((25, 25), np.uint8)) == 0
    assert changed[far].max() == 0, "PNG is lossless: the rest of the room is untouched"


def test_removed_furniture_leaves_the_room_colours() -> None:
    seed = 7
    after = decode(model.run("remove_furniture", render_room(seed))).astype(np.uint8)
    saturation = cv2.cvtColor(after, cv2.COLOR_BGR2HSV)[..., 1]
    assert saturation[furniture_mask(seed)].mean() < model.SATURATION_THRESHOLD / 2


def test_upscale_doubles_the_size() -> None:
    after = decode(model.run("upscale_2x", render_room(1, 160, 120)))
    assert after.shape == (240, 320, 3)


def test_an_empty_room_is_left_as_it_is() -> None:
    empty = np.full((60, 80, 3), 200, np.uint8)
    ok, png = cv2.imencode(".png", empty)
    assert (decode(model.run("remove_furniture", png.tobytes())) == empty).all()


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_undecodable_input_is_a_bad_image(data: bytes) -> None:
    with pytest.raises(model.BadImage):
        model.run("remove_furniture", data)


def test_unknown_service() -> None:
    with pytest.raises(ValueError, match="paint_it_pink"):
        model.run("paint_it_pink", render_room(1))
