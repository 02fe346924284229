#!/usr/bin/env python3
"""Draws the PWA's icons (a white check mark on the app's accent colour) as PNGs with the
standard library only, into templates/static/icons/. Run again after changing the design;
the PNGs are committed."""
import os
import struct
import zlib

ACCENT = (0x2F, 0x6F, 0xDD)
WHITE = (0xFF, 0xFF, 0xFF)
OUT = os.path.join(os.path.dirname(__file__), "..", "templates", "static", "icons")


def dist_to_segment(px, py, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    cx, cy = ax + t * dx, ay + t * dy
    return ((px - cx) ** 2 + (py - cy) ** 2) ** 0.5


def icon(size, safe_zone):
    # The check mark in unit coordinates; a maskable icon keeps it inside the 80% safe zone.
    scale = 0.8 if safe_zone else 1.0
    pts = [(0.28, 0.52), (0.44, 0.68), (0.74, 0.34)]
    pts = [(0.5 + (x - 0.5) * scale, 0.5 + (y - 0.5) * scale) for x, y in pts]
    width = 0.085 * scale
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            u, v = (x + 0.5) / size, (y + 0.5) / size
            d = min(dist_to_segment(u, v, *pts[0], *pts[1]), dist_to_segment(u, v, *pts[1], *pts[2]))
            row += bytes(WHITE if d < width else ACCENT)
        rows.append(bytes(row))
    raw = zlib.compress(b"".join(rows), 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


for name, size, safe in [("icon-192.png", 192, False), ("icon-512.png", 512, False),
                         ("icon-maskable-512.png", 512, True)]:
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(icon(size, safe))
