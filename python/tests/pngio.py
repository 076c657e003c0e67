"""8-bit PNG files (grey, RGB, RGBA) to and from numpy arrays without PIL, for the edit
tests' source images and masks (``flowar.read_image`` reads only what flowar writes)."""

import struct
import zlib

import numpy as np

_CHANNELS = {0: 1, 2: 3, 6: 4}


def read_png(path) -> np.ndarray:
    """A non-interlaced 8-bit grey, RGB or RGBA PNG as ``uint8 [H, W]`` or ``[H, W, C]``."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert depth == 8 and interlace == 0 and color in _CHANNELS, (path, depth, color)
    c = _CHANNELS[color]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w * c + 1)
    out = np.zeros((h, w * c), np.int32)
    prev = np.zeros(w * c, np.int32)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        cur = np.zeros(w * c, np.int32)
        for x in range(w * c):
            a = cur[x - c] if x >= c else 0
            b = prev[x]
            d = prev[x - c] if x >= c else 0
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:  # Paeth
                pa, pb, pc = abs(b - d), abs(a - d), abs(a + b - 2 * d)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else d)
            cur[x] = (line[x] + p) & 255
        out[y] = prev = cur
    out = out.astype(np.uint8)
    return out.reshape(h, w) if c == 1 else out.reshape(h, w, c)


def write_png(path, a: np.ndarray) -> None:
    """``uint8 [H, W]`` (grey), ``[H, W, 3]`` or ``[H, W, 4]`` as a PNG file."""
    a = np.ascontiguousarray(a, np.uint8)
    color = 0 if a.ndim == 2 else {3: 2, 4: 6}[a.shape[2]]
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n"
                + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
