import struct

import cv2
import numpy as np
import pytest

from spillway import imageinfo


def encoded(ext: str, width: int, height: int) -> bytes:
    ok, data = cv2.imencode(ext, np.zeros((height, width, 3), np.uint8))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("ext,fmt", [(".png", "png"), (".jpg", "jpeg")])
def test_reads_dimensions_of_real_files(ext: str, fmt: str) -> None:
    assert imageinfo.inspect(encoded(ext, 640, 480)) == (fmt, 640, 480)


def test_jpeg_frame_header_behind_exif_segment() -> None:
    jpeg = encoded(".jpg", 300, 200)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 1000) + b"\0" * 1000
    assert imageinfo.inspect(jpeg[:2] + app1 + jpeg[2:]) == ("jpeg", 300, 200)


PNG, JPEG = encoded(".png", 64, 48), encoded(".jpg", 64, 48)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "not a PNG or JPEG"),
        (b"GIF89a....", "not a PNG or JPEG"),
        (b"\x89PNG\r\n\x1a\n\0\0", "truncated"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "no JPEG frame header"),
        (PNG[:-20], "truncated"),  # cut inside its pixels
        (PNG[:33], "truncated"),  # the header alone: all an attacker needs to be priced small
        (PNG[:-12], "truncated"),  # no IEND
        (PNG[:40] + b"\0" + PNG[41:], "CRC"),  # a flipped byte
        (PNG[:33] + b"<html><script>alert(1)</script></html>", "truncated"),  # PNG-header polyglot
        (PNG + b"PK\x03\x04" + b"\0" * 26, "more than an image"),  # a ZIP behind the image
        (b"\xff\xd8" + JPEG[2:200], "truncated"),  # a JPEG cut inside its scan
        (JPEG[:-2], "truncated"),  # no EOI
        (JPEG + b"<?php echo 1; ?>", "more than an image"),
    ],
)
def test_refuses_what_is_not_one_whole_image(data: bytes, reason: str) -> None:
    with pytest.raises(imageinfo.NotAnImage, match=reason):
        imageinfo.inspect(data)


def test_takes_zero_padding_and_restart_markers() -> None:
    assert imageinfo.inspect(PNG + b"\0" * 8) == ("png", 64, 48)
    ok, restarts = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8),
                                [cv2.IMWRITE_JPEG_RST_INTERVAL, 1, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and imageinfo.inspect(restarts.tobytes()) == ("jpeg", 64, 48)
