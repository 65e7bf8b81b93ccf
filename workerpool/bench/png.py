"""A tiny PNG writer (zlib + struct): filled rectangles and a 3x5 pixel font, enough for bars."""

from __future__ import annotations

import struct
import zlib

Color = tuple[int, int, int]
# Each glyph is five rows of three pixels; a row is one octal digit (4 = left pixel).
GLYPHS = (
    "7555726227717477171755711747177475771111757577571725755656563444365556746477464434553"
    "5575572227111525565544447577556555525552656442556365655342167222255557555525577555255"
    "5522271247000000000200024007001124451245124214212407070020202444242224000070272071202"
)
FONT = {char: GLYPHS[5 * i:5 * i + 5]
        for i, char in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .,-/%<>=:()_+?")}
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (150, 150, 150)
GREEN: Color = (60, 160, 80)
RED: Color = (210, 60, 50)


class Canvas:
    """An RGB image in memory."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def rect(self, x: int, y: int, w: int, h: int, color: Color) -> None:
        left, right = max(0, x), min(self.width, x + w)
        if right <= left:
            return
        for row in range(max(0, y), min(self.height, y + h)):
            start = (row * self.width + left) * 3
            self.pixels[start:start + (right - left) * 3] = bytes(color) * (right - left)

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 2) -> None:
        for char in text.upper():
            for row, digit in enumerate(FONT.get(char, FONT["?"])):
                for col in range(3):
                    if int(digit) & (4 >> col):
                        self.rect(x + col * scale, y + row * scale, scale, scale, color)
            x += 4 * scale

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[r * stride:(r + 1) * stride])
                       for r in range(self.height))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + tag + data
                    + struct.pack(">I", zlib.crc32(tag + data)))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def bar_chart(title: str, bars: list[tuple[str, float, str]], limit: float = 1.0,
              top: float = 2.0) -> bytes:
    """Horizontal bars (label, value, value text); green up to *limit*, red past it, with a
    line at *limit*. Values past *top* are drawn cut at *top*."""
    label_w, plot_w, bar_h, gap = 380, 420, 18, 10
    width, height = label_w + plot_w + 120, 60 + len(bars) * (bar_h + gap) + 40
    canvas = Canvas(width, height)
    canvas.text(10, 12, title, scale=3)
    y0 = 50
    bottom = y0 + len(bars) * (bar_h + gap)
    marker = label_w + int(plot_w * limit / top)
    canvas.rect(label_w, y0 - 4, 1, bottom - y0, GREY)
    canvas.rect(marker, y0 - 6, 2, bottom - y0 + 6, BLACK)
    for index, (label, value, shown) in enumerate(bars):
        y = y0 + index * (bar_h + gap)
        canvas.text(10, y + 4, label[:45])
        length = int(plot_w * min(max(value, 0.0), top) / top)
        canvas.rect(label_w, y, length, bar_h, GREEN if value <= limit else RED)
        if value > top:  # cut: a white break near the end
            canvas.rect(label_w + length - 14, y, 4, bar_h, WHITE)
        canvas.rect(label_w + length + 3, y + 1, len(shown) * 8 + 6, bar_h - 2, WHITE)
        canvas.text(label_w + length + 6, y + 4, shown)
    canvas.text(marker - 20, bottom + 6, f"GOAL {limit:g}")
    canvas.text(label_w + plot_w - 20, bottom + 6, f"{top:g}")
    canvas.text(label_w - 4, bottom + 6, "0")
    return canvas.png()
