"""Draw the classification onto the spectrogram, as imagenet.py does, with numpy alone (no PIL, no CUDA).

imagenet.py draws ``"97.31% normal"`` (``{:05.2f}% {label}``, one line per
top-K prediction) in white on a translucent dark box at x=5, y=5 + n·(size+5).
:func:`draw_overlay` does the same on a copy of the image, enlarged by an
integer factor when the image is small (R=64 becomes 128×128 so the text
fits), and adds one small probability bar per class along the bottom.

The font is a 5×7 pixel ASCII bitmap (columns of bits, LSB at the top, with
one descender row), embedded below and scaled by whole pixels.
"""
import numpy as np

# 5 columns per glyph, characters 0x20..0x7E; bit 0 is the top row, bit 7 the descender row.
_FONT_HEX = (
    "0000000000" "00005f0000" "0007000700" "147f147f14" "242a7f2a12" "2313086462" "3649562050" "0008070300"
    "001c224100" "0041221c00" "2a1c7f1c2a" "08083e0808" "0080703000" "0808080808" "0000606000" "2010080402"
    "3e5149453e" "00427f4000" "7249494946" "2141494d33" "1814127f10" "2745454539" "3c4a494931" "4121110907"
    "3649494936" "464949291e" "0000140000" "0040340000" "0008142241" "1414141414" "0041221408" "0201590906"
    "3e415d594e" "7c1211127c" "7f49494936" "3e41414122" "7f4141413e" "7f49494941" "7f09090901" "3e41415173"
    "7f0808087f" "00417f4100" "2040413f01" "7f08142241" "7f40404040" "7f021c027f" "7f0408107f" "3e4141413e"
    "7f09090906" "3e4151215e" "7f09192946" "2649494932" "03017f0103" "3f4040403f" "1f2040201f" "3f4038403f"
    "6314081463" "0304780403" "6159494d43" "007f414141" "0204081020" "004141417f" "0402010204" "4040404040"
    "0003070800" "2054547840" "7f28444438" "3844444428" "384444287f" "3854545418" "00087e0902" "18a4a49c78"
    "7f08040478" "00447d4000" "2040403d00" "7f10284400" "00417f4000" "7c04780478" "7c08040478" "3844444438"
    "fc18242418" "18242418fc" "7c08040408" "4854545424" "04043f4424" "3c4040207c" "1c2040201c" "3c4030403c"
    "4428102844" "4c9090907c" "4464544c44" "0008364100" "0000770000" "0041360800" "0201020402"
)
GLYPH_W, GLYPH_H = 5, 8
WHITE = (255, 255, 255)
GRAY40 = (40, 40, 40)
LIGHT_GRAY = (200, 200, 200)  # the bars panel: labels and bars of the classes not decided
BAR_GRAY = (70, 70, 70)       # the empty part of a bar


def _glyphs():
    raw = bytes(bytearray.fromhex(_FONT_HEX))
    columns = np.frombuffer(raw, dtype=np.uint8).reshape(-1, GLYPH_W)
    bits = (columns[:, None, :] >> np.arange(GLYPH_H, dtype=np.uint8)[None, :, None]) & 1
    return bits.astype(bool)  # (95, 8 rows, 5 columns)


GLYPHS = _glyphs()
CELLS = np.pad(GLYPHS, ((0, 0), (0, 0), (0, 1)), mode="constant")  # each glyph with its spacing column


_MASKS = {}


def text_mask(text, scale=1):
    """Boolean mask (rows, columns) of ``text`` in the bitmap font, ``scale`` pixels per font pixel.

    Each character takes a (5+1)×8 cell; characters outside printable ASCII draw as '?'.  Masks are
    cached (read-only): the service draws the same labels and percentages window after window.
    """
    key = (text, scale)
    mask = _MASKS.get(key)
    if mask is None:
        if len(_MASKS) >= 512:
            _MASKS.clear()
        mask = _MASKS[key] = _text_mask(text, scale)
        mask.setflags(write=False)
    return mask


def _text_mask(text, scale):
    codes = np.array([ord(c) for c in text], dtype=np.int64)
    index = np.where((codes >= 32) & (codes <= 126), codes - 32, ord("?") - 32)
    mask = CELLS[index].transpose(1, 0, 2).reshape(GLYPH_H, -1)
    if scale > 1:
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
    return mask


_BLENDS = {}


def blend_table(color, alpha):
    """uint8 (3, 256): ``round(v·(1 − alpha) + color[c]·alpha)`` in float32 for every channel c and value v.

    A box blended through this table gets the very bytes the float32 arithmetic gives, with one lookup
    per pixel instead of five array operations (cached per colour and alpha).
    """
    key = (tuple(color), alpha)
    table = _BLENDS.get(key)
    if table is None:
        values = np.arange(256, dtype=np.float32)[None, :]
        table = np.round(values * (1.0 - alpha) + np.asarray(color, dtype=np.float32)[:, None] * alpha)
        table = _BLENDS[key] = table.astype(np.uint8)
        table.setflags(write=False)
    return table


_CHANNEL_OFFSET = np.array([0, 256, 512], dtype=np.intp)


def _blend_box(canvas, top, left, height, width, color, alpha):
    bottom, right = min(canvas.shape[0], top + height), min(canvas.shape[1], left + width)
    if bottom <= top or right <= left:
        return
    region = canvas[top:bottom, left:right]
    table = blend_table(color, alpha)
    if color[0] == color[1] == color[2]:  # a grey: one table serves every channel (take buffers its out)
        table[0].take(region, out=region, mode="clip")  # uint8 values index 256 entries: no check, no buffer
        return
    index = region + _CHANNEL_OFFSET  # (rows, columns, 3) indices into the flattened (3, 256) table
    region[...] = table.ravel().take(index)  # (index reaches 767: bounds-checked)


def draw_text(canvas, text, x, y, scale=1, color=WHITE, background=GRAY40, alpha=180 / 255.0, pad=None):
    """Draw ``text`` with its top-left at (x, y) on a translucent box, in place. Returns the box height."""
    mask = text_mask(text, scale)
    pad = scale if pad is None else pad
    height, width = mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad
    if background is not None:
        _blend_box(canvas, y, x, height, width, background, alpha)
    top, left = y + pad, x + pad
    rows = min(mask.shape[0], canvas.shape[0] - top)
    cols = min(mask.shape[1], canvas.shape[1] - left)
    if rows > 0 and cols > 0:  # the lit pixels set to color: one C call (boolean-mask assignment takes several)
        np.copyto(canvas[top:top + rows, left:left + cols], _colour_array(color), where=mask[:rows, :cols, None])
    return height


_COLOURS = {}


def _colour_array(color):
    """``color`` (r, g, b) as a read-only uint8 array of 3 (cached: the overlay uses a handful of colours)."""
    key = tuple(color)
    array = _COLOURS.get(key)
    if array is None:
        if len(_COLOURS) >= 64:
            _COLOURS.clear()
        array = _COLOURS[key] = np.array(key, dtype=np.uint8)
        array.setflags(write=False)
    return array


def imagenet_text(confidence, label):
    """imagenet.py's overlay text: '97.31% normal' (confidence in 0..1)."""
    return "%05.2f%% %s" % (confidence * 100.0, label)


def display_scale(side, minimum=128):
    """Integer enlargement so an image whose shorter side is ``side`` pixels gets at least ``minimum``."""
    return max(1, -(-minimum // max(1, side)))


def draw_overlay(image, lines, probabilities=None, classes=None, highlight=None, minimum=128):
    """The overlay image: ``image`` (uint8 H×W×3) enlarged, ``lines`` top-left, probability bars at the bottom.

    Parameters
    ----------
    image : uint8 (H, W, 3)
    lines : list of str, drawn top-left like imagenet.py (e.g. ``[imagenet_text(0.9731, 'normal')]``)
    probabilities : sequence of float (N,) or None; one bar per class when given
    classes : list of N class names (bar labels)
    highlight : index of the class whose bar is drawn in white (the decision), or None
    minimum : the overlay is enlarged by whole pixels until its shorter side is at least this

    Returns
    -------
    uint8 (H·k, W·k, 3), a new array.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("overlay needs a uint8 H×W×3 image, got %s %s" % (image.dtype, image.shape))
    k = display_scale(min(image.shape[:2]), minimum)
    canvas = np.repeat(np.repeat(image, k, axis=0), k, axis=1) if k > 1 else image.copy()
    scale = 2 if canvas.shape[1] >= 400 else 1
    y = 5
    for line in lines:
        y += draw_text(canvas, line, 5, y, scale) + 5
    if probabilities is not None and classes:
        _draw_bars(canvas, np.asarray(probabilities, dtype=np.float64).ravel(), classes, highlight, scale)
    return canvas


def _draw_bars(canvas, probabilities, classes, highlight, scale):
    """One row per class at the bottom-left: 'label |████     | 12%' on a translucent panel."""
    layout = _bar_layout(canvas.shape, classes, scale)
    if layout is None:
        return  # too small to draw bars legibly
    top, panel_h, panel_w, _, label_w, bar_w, row_h = layout
    _blend_box(canvas, top, 5, panel_h, panel_w, GRAY40, 180 / 255.0)
    # The ink of every row (label, bar, percentage) comes from a cache of row stamps, laid over the blended
    # panel in one step: the same pixels as drawing each part in turn (they do not overlap; the filled bar
    # covers the empty one as it did), with three numpy calls instead of a dozen.
    classes = tuple(classes)
    margin = _margin_ink(scale, panel_w)
    stamps = [margin]
    values = probabilities.tolist()
    for i in range(len(classes)):
        p = values[i]
        filled = int(round(bar_w * min(1.0, max(0.0, p))))
        stamps.append(_row_ink(canvas.shape, classes, i, i == highlight, "%3.0f%%" % (100.0 * p), filled, scale))
    stamps.append(margin)
    panel = canvas[top:top + panel_h, 5:5 + panel_w]
    np.copyto(panel, np.concatenate([stamp[0] for stamp in stamps]),
              where=np.concatenate([stamp[1] for stamp in stamps]))


def _bar_layout(shape, classes, scale):
    """(top, panel height, panel width, label characters, label width, bar width, row height) of the bars
    panel, or None when the image is too small for it."""
    row_h = (GLYPH_H + 2) * scale
    label_chars = min(8, max(len(name) for name in classes))
    label_w = (label_chars + 1) * (GLYPH_W + 1) * scale
    bar_w = max(10, min(shape[1] // 3, 60 * scale))
    pct_w = 5 * (GLYPH_W + 1) * scale
    panel_w = label_w + bar_w + pct_w + 4 * scale
    panel_h = row_h * len(classes) + 2 * scale
    top = shape[0] - panel_h - 5
    if top < 0 or panel_w + 5 > shape[1]:
        return None
    return top, panel_h, panel_w, label_chars, label_w, bar_w, row_h


_INKS = {}


def _cached_ink(key, draw):
    """(colours uint8 (h, w, 3), mask bool (h, w, 1)) that ``draw()`` returns as colours alone (0 where nothing is
    drawn: no ink is black), cached read-only under ``key``."""
    ink = _INKS.get(key)
    if ink is None:
        colors = draw()
        mask = colors.any(axis=2, keepdims=True)
        colors.setflags(write=False)
        mask.setflags(write=False)
        if len(_INKS) >= 1024:
            _INKS.clear()
        ink = _INKS[key] = (colors, mask)
    return ink


def _margin_ink(scale, panel_w):
    """The bars panel's empty top or bottom margin (``scale`` rows)."""
    return _cached_ink(("margin", scale, panel_w), lambda: np.zeros((scale, panel_w, 3), dtype=np.uint8))


def _row_ink(shape, classes, i, decided, percent, filled, scale):
    """The ink of class ``i``'s row of the bars panel: its label, its bar (``filled`` pixels of it in the row's
    colour, the rest dark) and ``percent``; white for the decided class, light grey for the others."""
    def draw():
        _, _, panel_w, label_chars, label_w, bar_w, row_h = _bar_layout(shape, classes, scale)
        color = WHITE if decided else LIGHT_GRAY
        colors = np.zeros((row_h, panel_w, 3), dtype=np.uint8)
        draw_text(colors, classes[i][:label_chars], scale, 0, scale, color=color, background=None, pad=0)
        colors[scale:GLYPH_H * scale - scale, label_w:label_w + bar_w] = BAR_GRAY
        if filled:
            colors[scale:GLYPH_H * scale - scale, label_w:label_w + filled] = color
        draw_text(colors, percent, label_w + bar_w + 2 * scale, 0, scale, color=color, background=None, pad=0)
        return colors
    return _cached_ink((shape, classes, i, decided, percent, filled, scale), draw)
