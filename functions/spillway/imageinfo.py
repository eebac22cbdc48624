"""What an uploaded file is, judged from its structure, without an imaging library in the Lambda.

The API prices a job (VRAM need) from the width and height, and refuses at submit what a GPU would
only fail on later: a file that is not whole (truncated), or that is more than one image (a polyglot:
an image header in front of HTML, an archive behind the image's end). Every PNG chunk's CRC is
checked up to IEND; a JPEG's segments and entropy-coded scans are walked up to EOI. Nothing may follow
the end. Both are linear scans in C-backed calls (crc32, bytes.find): milliseconds per megabyte.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless ...), i.e. C0-CF without DHT, JPG, DAC.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


class NotAnImage(ValueError):
    pass


class ImageInfo(NamedTuple):
    format: str  # "png" or "jpeg"
    width: int
    height: int


def inspect(data: bytes) -> ImageInfo:
    """The format and size of a whole PNG or JPEG file; NotAnImage, with the reason, for anything else."""
    if data.startswith(_PNG_SIGNATURE):
        return _png(memoryview(data))
    if data.startswith(b"\xff\xd8"):
        return _jpeg(data)
    raise NotAnImage("the input is not a PNG or JPEG image")


def _png(data: memoryview) -> ImageInfo:
    pos, size, has_pixels = len(_PNG_SIGNATURE), None, False
    while True:
        if pos + 12 > len(data):
            raise NotAnImage("the PNG is truncated: it ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise NotAnImage(f"the PNG is truncated inside its {kind.decode('latin-1')!r} chunk")
        if zlib.crc32(data[pos + 4 : end - 4]) != struct.unpack(">I", data[end - 4 : end])[0]:
            raise NotAnImage(f"the PNG's {kind.decode('latin-1')!r} chunk is corrupt (its CRC does not match)")
        if size is None and kind != b"IHDR":
            raise NotAnImage("the PNG header is truncated or corrupt: IHDR is not its first chunk")
        if kind == b"IHDR":
            size = struct.unpack(">II", data[pos + 8 : pos + 16])
        elif kind == b"IDAT":
            has_pixels = True
        elif kind == b"IEND":
            if not has_pixels:
                raise NotAnImage("the PNG has no image data (IDAT)")
            _nothing_after(data, end, "PNG", "IEND")
            return _checked("png", *size)
        pos = end


def _jpeg(data: bytes) -> ImageInfo:
    pos, size = 2, None
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            raise NotAnImage(f"the JPEG is corrupt: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _JPEG_EOI:
            if size is None:
                raise NotAnImage("the JPEG ends before any image data")
            _nothing_after(data, pos + 2, "JPEG", "EOI")
            return _checked("jpeg", *size)
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if pos + 4 > len(data):
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            break
        if marker in _JPEG_SOF and length >= 7:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (width, height)
        if marker == _JPEG_SOS:
            if size is None:
                raise NotAnImage("the JPEG's scan comes before its frame header")
            end = _scan_end(data, end)
        pos = end
    if size is None:
        raise NotAnImage("no JPEG frame header: the file is truncated or not a JPEG")
    raise NotAnImage("the JPEG is truncated: it ends before its EOI marker")


def _scan_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data that starts at pos ends: at the first marker that is neither a
    stuffed 0xFF00 nor a restart (RST0-7). The file's length if there is none (it is truncated)."""
    while (pos := data.find(b"\xff", pos)) != -1 and pos + 1 < len(data):
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
        elif following == 0xFF:  # fill bytes before a marker
            pos += 1
        else:
            return pos
    return len(data)


def _nothing_after(data: bytes | memoryview, end: int, fmt: str, marker: str) -> None:
    extra = bytes(data[end:]).rstrip(b"\0")  # zero padding some writers add is harmless
    if extra:
        raise NotAnImage(f"{len(extra)} bytes follow the {fmt}'s end ({marker}): the file is more than "
                         f"an image; save it again as a plain {fmt}")


def _checked(fmt: str, width: int, height: int) -> ImageInfo:
    if width <= 0 or height <= 0:
        raise NotAnImage(f"the {fmt.upper()} header says the image is {width}x{height}")
    return ImageInfo(fmt, width, height)
