"""Image tokens by OpenAI's tile rule for gpt-4o, with the size read from a ``data:`` URL.

``detail: low`` costs 85 tokens. Otherwise the image is fitted into 2048x2048, scaled down so
its short side is at most 768, and costs 170 per 512x512 tile plus 85. palaver never fetches
an image: one it cannot see (an ``https`` URL, an unknown format) counts as 1024x1024.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

LOW_DETAIL = 85
PER_TILE = 170
UNSEEN = (1024, 1024)
_HEAD_CHARS = 65_536  # how much of a base64 image is decoded to find its size


def tile_tokens(width: int, height: int, detail: Any = "auto") -> int:
    if detail == "low":
        return LOW_DETAIL
    if width <= 0 or height <= 0:
        width, height = UNSEEN
    scale = min(1.0, 2048 / max(width, height))
    scale *= min(1.0, 768 / (min(width, height) * scale))
    tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
    return PER_TILE * tiles + LOW_DETAIL


def image_tokens(url: Any, detail: Any = "auto") -> int:
    if detail == "low":
        return LOW_DETAIL
    size = data_url_size(url) if isinstance(url, str) else None
    return tile_tokens(*(size or UNSEEN), detail)


def data_url_size(url: str) -> tuple[int, int] | None:
    """The pixel size of a base64 ``data:`` image, from its first bytes; None if unknown."""
    if not url.startswith("data:"):
        return None
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        return None
    head = payload[:_HEAD_CHARS]
    head = head[: len(head) - len(head) % 4]
    try:
        data = base64.b64decode(head)
    except (binascii.Error, ValueError):
        return None
    return image_size(data)


def image_size(data: bytes) -> tuple[int, int] | None:
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return int(width), int(height)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    index = 2
    while index + 9 <= len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            index += 2
            continue
        (length,) = struct.unpack(">H", data[index + 2 : index + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            return int(width), int(height)
        index += 2 + int(length)
    return None
