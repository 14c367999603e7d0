"""Minimal PNG read/write with zlib and numpy: no PIL needed on the device.

``write_png`` writes 8-bit RGB, gray or indexed-colour (palette) non-interlaced
PNG atomically (``.part`` then rename), at zlib level 1 by default: spectrogram noise barely
compresses (level 6 saves ~12% of the bytes and costs 4× the time).  ``read_png`` reads what most tools write: 8-bit
gray, gray+alpha, RGB, RGBA and palette images, non-interlaced, all five
filter types; it returns uint8 H×W×3 RGB (alpha dropped).  Pixel values, not
file bytes, are the contract: zlib versions may compress differently.  An image
declaring more than ``MAX_PIXELS`` pixels is refused before anything is
decompressed (a 1 MB file may declare 20000×20000: 3.7 GB once decoded), and
decompression stops at the size the header announces.
"""
import os
import struct
import zlib

import numpy as np

from .errors import StethoError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 4096 * 4096  # 48 MB as RGB: far above any spectrogram (R ≤ 512), far below a Nano's memory


class PngError(StethoError, ValueError):
    """A PNG file that cannot be read (names the file)."""


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def encode_png(image, level=1, palette=None):
    """uint8 H×W×3 (RGB) or H×W (gray) array → PNG bytes (filter type 0 on every row).

    With ``palette`` (uint8 N×3, N ≤ 256), ``image`` is an H×W array of indices into it and the PNG is
    an indexed-colour image (colour type 3): the same RGB pixels for every reader, a third of the
    bytes to compress.  A spectrogram of the contract is exactly that: levels through a colour table.
    """
    image = np.asarray(image)
    if palette is not None:
        palette = np.asarray(palette)
        if (palette.dtype != np.uint8 or palette.ndim != 2 or palette.shape[1] != 3
                or not 1 <= palette.shape[0] <= 256):
            raise ValueError("expected a uint8 N×3 palette with N ≤ 256, got %s %s" % (palette.dtype, palette.shape))
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError("an indexed PNG needs uint8 H×W indices, got %s %s" % (image.dtype, image.shape))
        if image.size and int(image.max()) >= palette.shape[0]:
            raise ValueError("index %d is outside the %d-colour palette" % (int(image.max()), palette.shape[0]))
        color_type = 3
    elif image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError("expected uint8 H×W, H×W×3 or H×W×4, got %s %s" % (image.dtype, image.shape))
    else:
        color_type = {2: 0, 3: 2, 4: 6}[image.ndim if image.ndim == 2 else image.shape[2]]
    height, width = image.shape[:2]
    rows = image.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    if palette is not None:
        chunks.append(_chunk(b"PLTE", palette.tobytes()))
    chunks += [_chunk(b"IDAT", zlib.compress(raw, level)), _chunk(b"IEND", b"")]
    return _SIGNATURE + b"".join(chunks)


def write_png(path, image, level=1, palette=None):
    """Write ``image`` (see :func:`encode_png`) as PNG to ``path`` atomically (never a half-written file)."""
    data = encode_png(image, level, palette)
    tmp = str(path) + ".part"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, str(path))


def _unfilter(raw, height, stride, bpp, path):
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.int32)
    pos = 0
    for row in range(height):
        kind = raw[pos]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=pos + 1).astype(np.int32)
        pos += stride + 1
        if kind == 0:
            current = line
        elif kind == 1:
            current = line.copy()
            for i in range(bpp, stride):
                current[i] = (current[i] + current[i - bpp]) & 0xFF
        elif kind == 2:
            current = (line + previous) & 0xFF
        elif kind == 3:
            current = line.copy()
            for i in range(stride):
                left = current[i - bpp] if i >= bpp else 0
                current[i] = (current[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            current = line.copy()
            for i in range(stride):
                a = current[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                current[i] = (current[i] + predictor) & 0xFF
        else:
            raise PngError("%s: bad PNG filter type %d on row %d" % (path, kind, row))
        out[row] = current
        previous = current
    return out


def read_png(path, max_pixels=MAX_PIXELS):
    """Read an 8-bit PNG into uint8 H×W×3 RGB. Raises PngError naming ``path`` on anything else.

    ``max_pixels``: images declaring more pixels (width × height) are refused unread.
    """
    path = str(path)
    try:
        with open(path, "rb") as handle:
            blob = handle.read()
    except (IOError, OSError) as error:
        raise PngError("%s: cannot read file (%s)" % (path, error))
    if blob[:8] != _SIGNATURE:
        raise PngError("%s: not a PNG file" % path)
    pos, header, palette, idat = 8, None, None, []
    while pos + 8 <= len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        body = blob[pos + 8:pos + 8 + length]
        if len(body) < length:
            raise PngError("%s: truncated %s chunk" % (path, kind.decode("latin-1")))
        if kind == b"IHDR":
            if len(body) != 13:
                raise PngError("%s: IHDR chunk is %d bytes, not 13" % (path, len(body)))
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            if len(body) % 3:
                raise PngError("%s: PLTE chunk of %d bytes is not whole RGB entries" % (path, len(body)))
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise PngError("%s: PNG has no IHDR or no image data" % path)
    width, height, depth, color_type, _, _, interlace = header
    if width == 0 or height == 0:
        raise PngError("%s: PNG declares an empty image (%d×%d)" % (path, width, height))
    if width * height > max_pixels:
        raise PngError("%s: PNG declares %d×%d pixels (%d), more than the %d this reader accepts"
                       % (path, width, height, width * height, max_pixels))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color_type)
    if depth != 8 or channels is None or interlace:
        raise PngError("%s: only 8-bit non-interlaced PNG is supported (depth %d, colour type %d, interlace %d)"
                       % (path, depth, color_type, interlace))
    stride = width * channels
    try:  # never more than the header announces, whatever the stream would inflate to
        raw = zlib.decompressobj().decompress(b"".join(idat), height * (stride + 1))
    except zlib.error as error:
        raise PngError("%s: corrupt image data (%s)" % (path, error))
    if len(raw) < height * (stride + 1):
        raise PngError("%s: image data is truncated" % path)
    pixels = _unfilter(raw, height, stride, channels, path).reshape(height, width, channels)
    if color_type == 3:
        if palette is None:
            raise PngError("%s: palette image without PLTE chunk" % path)
        return palette[pixels[:, :, 0]]
    if channels in (1, 2):
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return pixels[:, :, :3].copy()
