"""An image's width and height from its header bytes, before anything is decoded; the pixel limit.

Why: a small file can declare a huge image (a 876 KB PNG of 30000x30000 pixels decodes to 2.7 GB of BGR, 3.6 GB at
peak). Decoding allocates what the header says, so a hostile or mistaken file must be refused by its header, not
after the allocation. PNG, JPEG, GIF, BMP, WebP and PNM headers are read here; other formats (TIFF, JPEG 2000, AVIF)
are left to OpenCV's own limit (2^30 pixels). No imports beyond the standard library: floor 0.
"""

from __future__ import annotations

import os
import re
import struct

DEFAULT_MAX_PIXELS = 200_000_000  # 200 MP (a 16320x12240 phone photo): 0.6 GB as BGR
MAX_PIXELS_ENV = "EDGECNN_MAX_PIXELS"

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNM = re.compile(rb"^P[1-6](?:\s|#[^\n]*\n)+(\d+)(?:\s|#[^\n]*\n)+(\d+)")


def max_pixels() -> int:
    """The largest image (width x height) edgecnn decodes: EDGECNN_MAX_PIXELS, else 200 million. An unparsable
    value is ignored (the default applies): the limit is a guard, not a setting to fail on."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").replace("_", "").strip()
    try:
        value = int(float(raw)) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        return DEFAULT_MAX_PIXELS
    return value if value > 0 else DEFAULT_MAX_PIXELS


def image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) declared by the header of the encoded image `data`, or None (unknown format, damaged)."""
    data = bytes(data[:32]) if len(data) < 32 else data
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg(data)
        match = _PNM.match(bytes(data[:512]))
        if match:
            return int(match.group(1)), int(match.group(2))
    except struct.error:  # a header cut short
        return None
    return None


def _webp(data) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg(data) -> tuple[int, int] | None:
    """Walk the JPEG segments to the first start-of-frame marker (EXIF and other APPn segments may come first)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker == 0xDA:  # start of scan before any frame header: damaged
            return None
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None
