"""Image conversion and a small, deterministic PNG codec.

torchvision is unavailable here, so the few transforms are written by hand with PIL and numpy.
Arrays are ``uint8 [C, H, W]`` everywhere (torch layout), C = 1 (grey) or 3 (RGB).

Why our own PNG writer: encoding must be byte-for-byte deterministic (example uids hash the bytes)
and independent of the Pillow version, and images written unfiltered decode with one
``zlib.decompress`` and a reshape, about 5x faster than Pillow on small images, which keeps the
streaming loader from being dominated by decoding. Any valid PNG still decodes (Pillow fallback).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from jestkit.errors import JestkitError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 3: 2}  # channels -> PNG colour type (grey, RGB)
RESIZE_MODES = ("crop", "stretch", "pad")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """Encode ``uint8 [C, H, W]`` (or ``[H, W]``) as an 8-bit grey/RGB PNG, deterministically."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] not in _COLOR_TYPE:
        raise JestkitError(
            f"image: expected uint8 [C, H, W] with C in (1, 3), got {arr.dtype} {tuple(arr.shape)}"
        )
    c, h, w = arr.shape
    rows = np.ascontiguousarray(arr.transpose(1, 2, 0)).reshape(h, w * c)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, level))
        + _chunk(b"IEND", b"")
    )


def _parse_png(data: bytes) -> tuple[tuple[int, int, int, int, int], bytes]:
    """Walk the chunks, checking CRCs. Returns ((w, h, depth, colour, interlace), IDAT bytes)."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG (bad signature)")
    pos, header, idat = 8, None, []
    n = len(data)
    while True:
        if pos + 12 > n:
            raise ValueError("truncated PNG (no IEND chunk)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > n:
            raise ValueError(f"truncated PNG ({kind.decode('latin-1')} chunk cut short)")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) != crc:
            raise ValueError(f"corrupt PNG (bad CRC in {kind.decode('latin-1')} chunk)")
        if kind == b"IHDR":
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
            header = (w, h, depth, colour, interlace)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos = end
    if header is None:
        raise ValueError("corrupt PNG (no IHDR chunk)")
    return header, b"".join(idat)


def check_png(data: bytes, shape: tuple[int, int, int]) -> str | None:
    """Validate PNG bytes against ``shape = (C, H, W)`` without a full decode: None if good.

    Otherwise returns the reason. Checks the signature, every chunk's CRC, the header (size, 8-bit,
    grey/RGB, not interlaced) and that the pixel data inflates to the right length with valid row
    filters: everything a decode can fail on, at a fraction of its cost (the loader's index pass).
    """
    c, h, w = shape
    try:
        (pw, ph, depth, colour, interlace), idat = _parse_png(data)
    except (ValueError, struct.error) as e:
        return str(e)
    if (pw, ph) != (w, h):
        return f"wrong image size {pw}x{ph} (expected {w}x{h})"
    if depth != 8 or colour != _COLOR_TYPE.get(c) or interlace != 0:
        return f"unsupported PNG (bit depth {depth}, colour type {colour}; expected 8-bit {'grey' if c == 1 else 'RGB'})"
    try:
        raw = zlib.decompress(idat)
    except zlib.error as e:
        return f"corrupt PNG (pixel data: {e})"
    if len(raw) != h * (1 + w * c):
        return f"corrupt PNG (pixel data has {len(raw)} bytes, expected {h * (1 + w * c)})"
    filters = np.frombuffer(raw, np.uint8)[:: 1 + w * c]
    if filters.max(initial=0) > 4:
        return "corrupt PNG (bad row filter)"
    return None


def _single_idat(data: bytes) -> tuple[tuple[int, int, int, int, int], bytes] | None:
    """The layout :func:`encode_png` writes (IHDR, one IDAT, IEND), read without CRC checks."""
    if len(data) < 57 or data[:16] != PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR":
        return None
    w, h, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    length, kind = struct.unpack_from(">I4s", data, 33)
    if kind != b"IDAT" or 45 + length + 12 != len(data):
        return None
    return (w, h, depth, colour, interlace), data[41 : 41 + length]


def decode_png(
    data: bytes, shape: tuple[int, int, int] | None = None, verify: bool = True
) -> np.ndarray:
    """Decode PNG bytes to ``uint8 [C, H, W]``; fast path for unfiltered 8-bit grey/RGB PNGs.

    With ``shape`` given, a PNG of another size or channel count raises ``ValueError``.
    ``verify=False`` skips chunk CRCs for already-validated bytes (zlib still checks its own
    checksum of the pixel data).
    """
    try:
        parsed = None if verify else _single_idat(data)
        (w, h, depth, colour, interlace), idat = parsed or _parse_png(data)
    except struct.error as e:
        raise ValueError(f"corrupt PNG ({e})") from None
    c = {0: 1, 2: 3}.get(colour)
    if c is not None and depth == 8 and interlace == 0:
        try:
            raw = np.frombuffer(zlib.decompress(idat), np.uint8)
        except zlib.error as e:
            raise ValueError(f"corrupt PNG (pixel data: {e})") from None
        if raw.size != h * (1 + w * c):
            raise ValueError("corrupt PNG (pixel data has the wrong length)")
        rows = raw.reshape(h, 1 + w * c)
        if not rows[:, 0].any():  # every row unfiltered: the pixels are the bytes
            arr = rows[:, 1:].reshape(h, w, c).transpose(2, 0, 1).copy()
            if shape is not None and arr.shape != tuple(shape):
                raise ValueError(f"image has shape {arr.shape}, expected {tuple(shape)}")
            return arr
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        arr = pil_to_array(img, channels=shape[0] if shape else (1 if img.mode == "L" else 3))
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"image has shape {arr.shape}, expected {tuple(shape)}")
    return arr


def pil_to_array(img: Image.Image, channels: int) -> np.ndarray:
    """Any PIL mode -> ``uint8 [channels, H, W]``.

    Transparency is composited onto black (what dropping alpha does to the usual transparent-black
    pixels); 16/32-bit and float images are rescaled to 8 bits.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = a.max(initial=0.0)
        scale = 255.0 if top <= 1.0 and img.mode == "F" else (255.0 / 65535.0 if top > 255 else 1.0)
        img = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba).convert("RGB")
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None].copy() if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


@dataclass(frozen=True)
class ImageTransform:
    """Convert any image (size, mode) to ``uint8 [channels, image_size, image_size]``.

    ``resize``: ``"crop"`` scales the shorter side to ``image_size`` and centre-crops (CLIP's
    convention), ``"stretch"`` ignores the aspect ratio, ``"pad"`` fits the longer side and pads
    with black. Downscaling uses Pillow's antialiased bicubic filter.
    """

    image_size: int
    channels: int = 1
    resize: str = "crop"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise JestkitError(f"image_size: must be a positive integer, got {self.image_size!r}")
        if self.channels not in (1, 3):
            raise JestkitError(f"channels: must be 1 or 3, got {self.channels!r}")
        if self.resize not in RESIZE_MODES:
            raise JestkitError(f"resize: must be one of {RESIZE_MODES}, got {self.resize!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def needs_resize(self, img: Image.Image) -> bool:
        return img.size != (self.image_size, self.image_size)

    def __call__(self, img: Image.Image) -> np.ndarray:
        img = ImageOps.exif_transpose(img)
        arr = pil_to_array(img, self.channels)
        if not self.needs_resize(img):
            return arr
        mode = "L" if self.channels == 1 else "RGB"
        pil = Image.fromarray(arr[0] if self.channels == 1 else arr.transpose(1, 2, 0), mode=mode)
        s = self.image_size
        w, h = pil.size
        if self.resize == "stretch":
            out = pil.resize((s, s), Image.BICUBIC)
        elif self.resize == "crop":
            k = s / min(w, h)
            nw, nh = max(s, round(w * k)), max(s, round(h * k))
            pil = pil.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            out = pil.crop((left, top, left + s, top + s))
        else:  # pad
            k = s / max(w, h)
            nw, nh = max(1, round(w * k)), max(1, round(h * k))
            out = Image.new(mode, (s, s))
            out.paste(pil.resize((nw, nh), Image.BICUBIC), ((s - nw) // 2, (s - nh) // 2))
        res = np.asarray(out, dtype=np.uint8)
        return res[None].copy() if res.ndim == 2 else res.transpose(2, 0, 1).copy()
