#!/usr/bin/env python3
"""Renders a gradflow report.html in headless Chromium and checks what a person would see.

usage: check_report.py [--min-coloured PERCENT] REPORT_HTML SCREENSHOT_PNG [MAX_BYTES MAX_RENDER_SECONDS]

Fails (exit 1) if the file references anything outside itself, if Chromium cannot render it, or
if the screenshot is blank (under 1% coloured pixels, or PERCENT: a page of line charts on white
colours less than one of heatmaps); with the limits, also if the file is larger than MAX_BYTES or takes
more than MAX_RENDER_SECONDS longer to render than a blank page (Chromium's own start-up is timed
on the blank page and left out). Uses only the standard library (zlib) to read the PNG.
"""
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib


def png_pixels(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path} is not a PNG")
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            if depth != 8 or ctype not in (2, 6):
                raise SystemExit(f"unexpected PNG format (depth {depth}, colour type {ctype})")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def screenshot(browser, html, png, work):
    """Renders `html` into `png`; returns the seconds it took."""
    with tempfile.TemporaryDirectory(dir=work) as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--hide-scrollbars",
               "--window-size=1200,6000", f"--screenshot={os.path.abspath(png)}", "file://" + os.path.abspath(html)]
        start = time.monotonic()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False)
        return time.monotonic() - start


def main():
    min_coloured = 1.0
    if len(sys.argv) > 2 and sys.argv[1] == "--min-coloured":
        min_coloured = float(sys.argv[2])
        del sys.argv[1:3]
    html, png = sys.argv[1], sys.argv[2]
    text = open(html, encoding="utf-8").read()
    external = re.findall(r"(?:https?:|//[a-z]|<script|<link|<img|src=|url\((?!#))", text)
    if external:
        raise SystemExit(f"{html} references outside resources: {sorted(set(external))}")
    browser = next((b for b in ("chromium", "chromium-browser") if subprocess.call(["which", b], stdout=subprocess.DEVNULL) == 0), None)
    if browser is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    if len(sys.argv) > 3 and os.path.getsize(html) > int(sys.argv[3]):
        raise SystemExit(f"{html} is {os.path.getsize(html)} bytes, over the limit of {sys.argv[3]}")
    with tempfile.TemporaryDirectory() as work:
        blank = os.path.join(work, "blank.html")
        open(blank, "w").write("<!DOCTYPE html><html><body>blank</body></html>")
        # The faster of two runs each: Chromium's start-up alone varies by a few tenths of a second.
        startup = min(screenshot(browser, blank, os.path.join(work, "blank.png"), work) for _ in range(2))
        seconds = min(screenshot(browser, html, png, work) for _ in range(2)) - startup
    print(f"check_report: {os.path.getsize(html)} bytes, rendered in {seconds:.2f} s beyond Chromium's start-up")
    if len(sys.argv) > 4 and seconds > float(sys.argv[4]):
        raise SystemExit(f"{html} took {seconds:.2f} s to render, over the limit of {sys.argv[4]} s")
    if not os.path.exists(png):
        raise SystemExit("chromium wrote no screenshot")
    width, height, bpp, rows = png_pixels(png)
    coloured = dark = 0
    for row in rows:
        for x in range(0, width * bpp, bpp * 4):
            r, g, b = row[x], row[x + 1], row[x + 2]
            if max(r, g, b) - min(r, g, b) > 60:
                coloured += 1
            if r + g + b < 200:
                dark += 1
    total = (width // 4) * height
    print(f"check_report: {width}x{height} screenshot, {100 * coloured / total:.1f}% coloured, {100 * dark / total:.1f}% dark pixels")
    if coloured < min_coloured / 100 * total or dark < 0.001 * total:
        raise SystemExit("the rendered report looks blank: no charts or text were drawn")


if __name__ == "__main__":
    main()
