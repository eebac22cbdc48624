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
    assert imageinfo.dimensions(encoded(ext, 640, 480)) == (fmt, 640, 480)


def test_jpeg_frame_header_behind_exif_segment() -> None:
    jpeg = encoded(".jpg", 300, 200)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 1000) + b"\0" * 1000
    assert imageinfo.dimensions(jpeg[:2] + app1 + jpeg[2:]) == ("jpeg", 300, 200)


@pytest.mark.parametrize(
    "head,reason",
    [
        (b"", "not a PNG or JPEG"),
        (b"GIF89a....", "not a PNG or JPEG"),
        (b"\x89PNG\r\n\x1a\n\0\0", "truncated"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "no JPEG frame header"),
    ],
)
def test_refuses_what_is_not_an_image(head: bytes, reason: str) -> None:
    with pytest.raises(imageinfo.NotAnImage, match=reason):
        imageinfo.dimensions(head)
