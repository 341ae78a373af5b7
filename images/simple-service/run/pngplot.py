"""Tiny PNG charts in pure Python (zlib + struct): enough for a line chart and a histogram."""

import struct
import zlib

WIDTH, HEIGHT, MARGIN = 640, 400, 40
WHITE, BLACK, BLUE, GREY = (255, 255, 255), (0, 0, 0), (40, 90, 200), (220, 220, 220)


class Canvas:
    def __init__(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def set(self, x: int, y: int, color: tuple) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            offset = 3 * (y * self.width + x)
            self.pixels[offset:offset + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: tuple) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            self.set(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps), color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            for x in range(min(x0, x1), max(x0, x1) + 1):
                self.set(x, y, color)

    def axes(self) -> None:
        for i in range(1, 5):
            y = MARGIN + i * (self.height - 2 * MARGIN) // 5
            self.line(MARGIN, y, self.width - MARGIN, y, GREY)
        self.line(MARGIN, self.height - MARGIN, self.width - MARGIN, self.height - MARGIN, BLACK)
        self.line(MARGIN, MARGIN, MARGIN, self.height - MARGIN, BLACK)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.pixels[3 * y * self.width:3 * (y + 1) * self.width]) for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _scale(value: float, low: float, high: float, start: int, end: int) -> int:
    if high == low:
        return (start + end) // 2
    return round(start + (value - low) * (end - start) / (high - low))


def line_chart(xs: list, ys: list) -> bytes:
    canvas = Canvas()
    canvas.axes()
    if len(xs) >= 2:
        points = [
            (_scale(x, min(xs), max(xs), MARGIN, WIDTH - MARGIN), _scale(y, min(ys), max(ys), HEIGHT - MARGIN, MARGIN))
            for x, y in zip(xs, ys)
        ]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            canvas.line(x0, y0, x1, y1, BLUE)
    return canvas.png()


def histogram(values: list, bins: int = 20) -> bytes:
    canvas = Canvas()
    canvas.axes()
    if values:
        low, high = min(values), max(values)
        counts = [0] * bins
        for v in values:
            counts[min(int((v - low) / ((high - low) or 1) * bins), bins - 1)] += 1
        width = (WIDTH - 2 * MARGIN) // bins
        for i, count in enumerate(counts):
            top = _scale(count, 0, max(counts), HEIGHT - MARGIN, MARGIN)
            x0 = MARGIN + i * width + 1
            canvas.rect(x0, top, x0 + width - 2, HEIGHT - MARGIN - 1, BLUE)
    return canvas.png()
