"""Image dimensions from the first bytes of a file, without an imaging library in the Lambda.

The API prices a job (VRAM need) and refuses oversize inputs before anything is queued, so it
needs width and height; reading a header from a ranged S3 GET is all that takes.
"""

from __future__ import annotations

import struct

HEADER_BYTES = 64 * 1024  # enough for a JPEG's frame header behind its EXIF and thumbnails, usually

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless ...), i.e. C0-CF without DHT, JPG, DAC.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class NotAnImage(ValueError):
    pass


def dimensions(head: bytes) -> tuple[str, int, int]:
    """(format, width, height) of a PNG or JPEG, from its first bytes."""
    if head.startswith(_PNG_SIGNATURE):
        return _png(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(head)
    raise NotAnImage("the input is not a PNG or JPEG image")


def _png(head: bytes) -> tuple[str, int, int]:
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise NotAnImage("the PNG header is truncated or corrupt")
    width, height = struct.unpack(">II", head[16:24])
    return _checked("png", width, height)


def _jpeg(head: bytes) -> tuple[str, int, int]:
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            raise NotAnImage("the JPEG header is corrupt")
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", head[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(head):
                break
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return _checked("jpeg", width, height)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise NotAnImage("no JPEG frame header in the first bytes of the file")


def _checked(fmt: str, width: int, height: int) -> tuple[str, int, int]:
    if width <= 0 or height <= 0:
        raise NotAnImage(f"the {fmt.upper()} header says the image is {width}x{height}")
    return fmt, width, height
