"""The display overlay (latest.png, --video): the network's image with its axes and imagenet.py's text, numpy only.

:func:`draw_overlay` lays out, on a dark canvas ``size`` pixels high (``--overlay-size``, default 384)::

    Hz                      97.31% normal          imagenet.py's lines ({:05.2f}% {label}, or 'uncertain',
    800 ┤┌──────────────┐                          'no signal', 'poor contact'), large
        ││ the network's│   extra   ██░░░░░░  21%   one bar per class, the decided one in colour
    400 ┤│ R×R image,   │   murmur  ███░░░░░  28%
        ││ enlarged k×k │   normal  ██████░░  51%
      0 ┤└──────────────┘
        0    1    2    3                          exam 3: 4.5 of 8 s   the exam in progress, or the
            time (s)                               so far: normal       last exam's verdict

The image is the network's input exactly, repeated k×k (the largest whole k that fits; nearest neighbour),
so what is shown is what was classified; nothing is drawn over it.  The axes come from the model's contract
(:func:`overlay_axes`): seconds of the window under it, Hz beside it (linear or mel rows).  Everything that
does not change from window to window (axes, labels, empty bars) is drawn once per layout and copied.
:class:`OverlayFrame` defers the drawing to the thread that needs the pixels (the PNG writer), so the
window's path only hands over references.

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


# ------------------------------------------------------------------------------------------------
# The display overlay: the network's image beside its axes, the decision and one bar per class

DEFAULT_SIZE = 384            # the overlay's height (px) unless --overlay-size says otherwise
MIN_SIZE, MAX_SIZE = 128, 2048
BACKGROUND = (16, 21, 28)     # the status page's and the exam picture's colours
TEXT = (230, 237, 243)
MUTED = (159, 176, 192)
AXIS = (120, 136, 152)
TRACK = (44, 58, 75)          # the empty part of a bar
NORMAL_BAR = (129, 199, 132)  # the decided class's bar: green for a normal class, red for any other
ABNORMAL_BAR = (239, 83, 80)
NORMAL_NAMES = ("normal", "N", "healthy")
PHRASES = ("uncertain", "poor contact", "no signal")  # the service's lines other than imagenet_text's
MAX_LABEL_CHARS = 12          # class names longer than this are cut in the bars panel


class OverlayAxes(object):
    """Where a contract puts time and frequency on its R×R network image (row 0 the highest frequency).

    Built by :func:`overlay_axes`.  ``window_s``: seconds of audio one image holds; :meth:`time_fraction`
    (seconds → x as a fraction of the image width, 0 the left edge) follows the STFT's centred frames
    resized to R columns; :meth:`frequency_fraction` (Hz → height above the bottom edge, a fraction of the
    image height) follows the rows before the resize: linear rfft bins from fmin to fmax, or HTK-mel
    band centres, evenly spaced in Hz or in mel.  ``scale``: 'linear' or 'mel'; ``low``/``high``: the
    frequencies (Hz) of the image's bottom and top edges.
    """

    def __init__(self, window_s, n_frames, frame_s, scale, first, step, n_rows):
        self.window_s = float(window_s)
        self.n_frames, self.frame_s = int(n_frames), float(frame_s)
        self.scale = scale
        self.first, self.step, self.n_rows = float(first), float(step), int(n_rows)
        self.low = self._hz(self.first - 0.5 * self.step)
        self.high = self._hz(self.first + (self.n_rows - 0.5) * self.step)
        self.key = (self.window_s, self.n_frames, self.frame_s, scale, self.first, self.step, self.n_rows)

    def time_fraction(self, seconds):
        return (seconds / self.frame_s + 0.5) / self.n_frames

    def frequency_fraction(self, hz):
        return ((self._domain(hz) - self.first) / self.step + 0.5) / self.n_rows

    def _domain(self, hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0) if self.scale == "mel" else float(hz)

    def _hz(self, value):
        return 700.0 * (10.0 ** (value / 2595.0) - 1.0) if self.scale == "mel" else float(value)


def overlay_axes(contract):
    """The :class:`OverlayAxes` of a :class:`stetho.contract.Contract` (its segmentation and spectrogram)."""
    spec = contract.spectrogram
    n_frames = 1 + contract.segment_samples // spec.hop_length
    rows = spec.row_frequencies()
    if spec.scale == "mel":
        low, high = [2595.0 * np.log10(1.0 + f / 700.0) for f in (spec.fmin, spec.max_frequency)]
        step = (high - low) / (spec.n_mels + 1)
        first = low + step
    else:
        first, step = float(rows[0]), float(spec.sample_rate) / spec.n_fft
    return OverlayAxes(contract.segmentation.window_s, n_frames, spec.hop_length / float(spec.sample_rate),
                       spec.scale, first, step, len(rows))


def text_width(text, scale):
    """Pixels from the first lit column of ``text`` to its last cell's glyph (no trailing spacing column)."""
    return max(0, len(text) * (GLYPH_W + 1) * scale - scale)


def _nice_steps():
    for exponent in range(-2, 7):
        for mantissa in (1, 2, 2.5, 5):
            yield mantissa * 10.0 ** exponent


def _even_ticks(low, high, pixels, min_px):
    """Multiples of the smallest 1-2-2.5-5 step at least ``min_px`` apart on ``pixels`` for ``high - low``."""
    span = float(high - low)
    for step in _nice_steps():
        if step * pixels / span >= min_px:
            break
    first = int(np.ceil(low / step - 1e-9))
    return [round(i * step, 6) for i in range(first, int(np.floor(high / step + 1e-9)) + 1)]


def _time_ticks(window_s, pixels, spacing, scale):
    """Seconds 0..window_s at the smallest even step whose labels keep ``spacing`` pixels apart."""
    for step in _nice_steps():
        values = [round(i * step, 6) for i in range(int(np.floor(window_s / step + 1e-9)) + 1)]
        widest = max(text_width(time_label(v), scale) for v in values)
        if step * pixels / window_s >= widest + spacing:
            return values
    return [0.0]


def _frequency_ticks(axes, pixels, min_px):
    """[(Hz, pixels above the bottom edge)]: even steps on a linear axis; on a mel axis the roundest of
    1-2-5·10^n Hz first, each kept when at least ``min_px`` from those already kept."""
    low, high = max(0.0, axes.low), axes.high
    if axes.scale == "linear":
        values = _even_ticks(low, high, pixels, min_px)
    else:
        candidates = [m * 10.0 ** e for e in range(0, 6) for m in (1, 2, 5)] + [0.0]
        candidates = sorted((c for c in candidates if -0.02 <= axes.frequency_fraction(c) <= 1.02),
                            key=lambda c: (0 if c == 0 or str(int(c)).strip("0") == "1" else
                                           1 if str(int(c)).strip("0") == "5" else 2, c))
        values = []
        for value in candidates:
            at = axes.frequency_fraction(value) * pixels
            if all(abs(at - axes.frequency_fraction(v) * pixels) >= min_px for v in values):
                values.append(value)
        values.sort()
    out = []
    for value in values:
        fraction = axes.frequency_fraction(value)
        if -0.02 <= fraction <= 1.02:
            out.append((value, fraction * pixels))
    return out


def frequency_label(hz):
    """'0', '250', '1000', '12k': at most four characters up to 9999 Hz."""
    if hz >= 10000:
        return "%gk" % round(hz / 1000.0, 1)
    return "%d" % int(round(hz))


def time_label(seconds):
    return "%g" % round(seconds, 3)


def exam_lines(progress=None, last=None):
    """The overlay's exam caption (at most two short lines): the exam in progress (the dict of
    :func:`deploy_jetson.exam.progress`) or, between exams, the last exam's verdict (its exams.jsonl record)."""
    if progress:
        if progress["accepted_s"] < progress["min_s"]:  # accepted seconds of the minimum a verdict needs
            lines = ["exam %d: %.1f of %.0f s" % (progress["exam"], progress["accepted_s"], progress["min_s"])]
        else:
            lines = ["exam %d: %.1f s heard" % (progress["exam"], progress["accepted_s"])]
        provisional = progress.get("provisional") or {}
        if provisional.get("label"):
            lines.append("so far: %s" % provisional["label"])
        return lines
    if last:
        return ["exam %d verdict:" % last["exam"], str(last["verdict"])]
    return []


class _Layout(object):
    """Every position of one overlay design: canvas (height, width), the image's origin and enlargement, the
    axes' ticks, the column of text lines, bars and exam caption; ``base`` the canvas with every part that does
    not change from window to window already drawn (read-only)."""

    def __init__(self, size, shape, axes, classes, n_lines):
        h, w = shape
        s = self.small = max(1, size // 192)       # axis labels, bars panel, exam caption
        b = self.big = max(s + 1, size // 128)      # the imagenet.py lines
        m, gap, self.line_w, self.tick = 2 * s, 2 * s, s, 3 * s
        th = GLYPH_H * s
        if axes is not None:
            top = m + th + gap + th // 2            # the 'Hz' title above the top tick's label
            bottom = gap + self.tick + s + th + gap + th + m  # ticks, their labels, 'time (s)'
        else:
            top = bottom = m
        k = self.k = max(1, min((size - top - bottom) // h, (3 * size) // w))
        H, W = k * h, k * w
        height = max(size, top + H + bottom)
        self.y0 = top + (height - top - bottom - H) // 2
        # frequency ticks (Hz, y) and the room their labels take left of the image
        self.freq_ticks, label_w = [], 0
        if axes is not None:
            for hz, above in _frequency_ticks(axes, H, 2 * th + 2 * s):
                y = self.y0 + H - int(round(above))
                self.freq_ticks.append((frequency_label(hz), min(max(y, self.y0), self.y0 + H - 1)))
            label_w = max([text_width("Hz", s)] + [text_width(t, s) for t, _ in self.freq_ticks])
            self.x0 = m + label_w + 2 * s + self.tick + gap
        else:
            self.x0 = m
        # time ticks, per tile of a montage of whole windows side by side (classify.py)
        self.time_ticks = []  # (label or None, x, long)
        tiles = w // h if (axes is not None and w % h == 0) else 1
        if axes is not None:
            tile_w = W // tiles
            values = _time_ticks(axes.window_s, tile_w, 2 * (GLYPH_W + 1) * s, s)
            for tile in range(tiles):
                for value in values:
                    end = abs(value - axes.window_s) < 1e-9
                    if end and tile < tiles - 1:
                        continue  # the next tile's 0 marks the boundary
                    x = self.x0 + tile * tile_w + int(round(axes.time_fraction(value) * tile_w))
                    x = min(max(x, self.x0 + tile * tile_w), self.x0 + (tile + 1) * tile_w - 1)
                    self.time_ticks.append((time_label(value), x, tile > 0 and value == 0))
            right = max(text_width(t, s) for t, _, _ in self.time_ticks) // 2 + 2 * gap
        else:
            right = 0
        # the column: imagenet.py lines (big), then one bar per class, the exam caption at the bottom
        self.col_x = self.x0 + W + max(6 * s, right)
        self.label_chars = min(MAX_LABEL_CHARS, max([1] + [len(c) for c in classes]))
        self.label_w = self.label_chars * (GLYPH_W + 1) * s
        self.pct_w = text_width("100%", s)
        phrases = list(PHRASES) + [imagenet_text(1.0, c[:MAX_LABEL_CHARS]) for c in classes]
        self.col_w = max([text_width(p, b) for p in phrases] +
                         [self.label_w + 32 * s + self.pct_w, text_width("exam 99: 99.9 of 99 s", s)])
        self.bar_x = self.col_x + self.label_w + 3 * s  # the label's cells end with a blank column: 4 px apart
        self.bar_w = self.col_w - self.label_w - self.pct_w - 7 * s
        self.shape = (height, self.col_x + self.col_w + m, 3)
        self.line_h = GLYPH_H * b + 2 * b
        self.lines_y = max(m, self.y0 - th // 2 - gap - th) if axes is not None else self.y0
        bars_y = self.lines_y + max(2, n_lines) * self.line_h + 2 * gap
        self.exam_y = height - m - 2 * th - s
        if bars_y + len(classes) * (th + s) > self.exam_y - gap:
            self.exam_y = None  # so many classes that the bars need the exam caption's room
        room = (height - m if self.exam_y is None else self.exam_y - gap) - bars_y
        self.row_h = max(th + s, min(th + 4 * s, room // max(1, len(classes))))
        self.rows_y = [bars_y + i * self.row_h for i in range(len(classes))]
        self.classes = tuple(classes)
        self.axes = axes
        self.base = self._base(H, W, th, gap)
        self.base.setflags(write=False)

    def _base(self, H, W, th, gap):
        s, lw, tick = self.small, self.line_w, self.tick
        canvas = np.empty(self.shape, dtype=np.uint8)
        canvas[...] = BACKGROUND
        x0, y0 = self.x0, self.y0
        if self.axes is not None:
            axis_x = x0 - gap - lw                  # the frequency axis: a line left of the image, ticks, labels
            canvas[y0:y0 + H, axis_x:axis_x + lw] = AXIS
            for label, y in self.freq_ticks:
                canvas[y:y + lw, x0 - gap - tick:x0 - gap] = AXIS
                top = min(max(0, y - th // 2), self.shape[0] - th)
                draw_text(canvas, label, x0 - gap - tick - 2 * s - text_width(label, s), top, s,
                          color=MUTED, background=None, pad=0)
            draw_text(canvas, "Hz", x0 - gap - tick - 2 * s - text_width("Hz", s), y0 - th // 2 - gap - th, s,
                      color=MUTED, background=None, pad=0)
            axis_y = y0 + H + gap                   # the time axis under the image
            canvas[axis_y:axis_y + lw, x0:x0 + W] = AXIS
            for label, x, long in self.time_ticks:
                canvas[axis_y:axis_y + tick * (2 if long else 1), x:x + lw] = AXIS
                width = text_width(label, s)
                left = min(max(0, x - width // 2), self.shape[1] - width)
                draw_text(canvas, label, left, axis_y + tick + s, s, color=MUTED, background=None, pad=0)
            title = "time (s)"
            draw_text(canvas, title, x0 + (W - text_width(title, s)) // 2, axis_y + tick + s + th + gap, s,
                      color=MUTED, background=None, pad=0)
        for i, name in enumerate(self.classes):  # class names and empty bars; the window's values go on top
            y = self.rows_y[i]
            draw_text(canvas, name[:self.label_chars], self.col_x, y, s, color=MUTED, background=None, pad=0)
            canvas[y + s:y + (GLYPH_H - 1) * s, self.bar_x:self.bar_x + self.bar_w] = TRACK
        return canvas


_LAYOUTS = {}


def _layout(size, shape, axes, classes, n_lines):
    key = (size, shape, None if axes is None else axes.key, tuple(classes), max(2, n_lines))
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= 16:
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = _Layout(size, shape, axes, classes, n_lines)
    return layout


def draw_overlay(image, lines, probabilities=None, classes=None, highlight=None, axes=None, size=DEFAULT_SIZE,
                 exam=None):
    """The display overlay: the network's image, exactly, enlarged by a whole factor, beside its axes, with
    imagenet.py's lines, one bar per class and the exam's caption in a column on its right.

    Parameters
    ----------
    image : uint8 (H, W, 3); the network's R×R image, or several side by side (classify.py's montage)
    lines : list of str, drawn large at the top of the column like imagenet.py (e.g. ``[imagenet_text(0.9731,
        'normal')]``, ``['uncertain', '61.20% murmur']``, ``['no signal']``); a line too wide is drawn small
    probabilities : sequence of N floats (0..1), or None (the bars stay empty)
    classes : list of N class names (bar labels); None or empty: no bars
    highlight : index of the decided class (its name in white, its bar in colour), or None
    axes : :class:`OverlayAxes` of the model's contract (time 0..window_s under the image, frequency in Hz
        beside it; each R-wide tile of a montage gets its own time axis), or None for no axes
    size : the overlay's height in pixels (``--overlay-size``); the image is enlarged by the largest whole factor
        that fits it with its axes (at least 1: a larger image makes the overlay taller), the width follows
    exam : list of at most two short lines (:func:`exam_lines`) drawn small at the bottom of the column, or None

    Returns
    -------
    uint8 (height, width, 3), a new array: ``height == max(size, what the image needs)``; the image occupies
    ``[y0:y0 + k·H, x0:x0 + k·W]`` (see :func:`image_box`), pixel for pixel ``image`` repeated k×k.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("overlay needs a uint8 H×W×3 image, got %s %s" % (image.dtype, image.shape))
    classes = list(classes or [])
    layout = _layout(int(size), image.shape[:2], axes, classes, len(lines))
    canvas = layout.base.copy()
    k, (h, w) = layout.k, image.shape[:2]
    view = canvas[layout.y0:layout.y0 + k * h, layout.x0:layout.x0 + k * w].view()
    view.shape = (h, k, w, k, 3)  # a view of the same pixels (assigning .shape never copies: it raises instead)
    view[...] = image[:, None, :, None, :]
    s, b = layout.small, layout.big
    for i, line in enumerate(lines):
        scale = b if text_width(line, b) <= layout.col_w else s
        line = line[:(layout.col_w + s) // ((GLYPH_W + 1) * s)]  # what does not fit the column is cut
        draw_text(canvas, line, layout.col_x, layout.lines_y + i * layout.line_h, scale, color=TEXT,
                  background=None, pad=0)
    if probabilities is not None and classes:
        values = np.asarray(probabilities, dtype=np.float64).ravel().tolist()
        for i, name in enumerate(classes):
            y = layout.rows_y[i]
            decided = i == highlight
            if decided:
                draw_text(canvas, name[:layout.label_chars], layout.col_x, y, s, color=TEXT, background=None, pad=0)
            p = min(1.0, max(0.0, values[i]))
            filled = int(round(layout.bar_w * p))
            colour = (NORMAL_BAR if name in NORMAL_NAMES else ABNORMAL_BAR) if decided else MUTED
            canvas[y + s:y + (GLYPH_H - 1) * s, layout.bar_x:layout.bar_x + filled] = colour
            pct = "%3.0f%%" % (100.0 * p)
            draw_text(canvas, pct, layout.col_x + layout.col_w - text_width(pct, s), y, s,
                      color=TEXT if decided else MUTED, background=None, pad=0)
    for i, line in enumerate((exam or [])[:2] if layout.exam_y is not None else []):
        draw_text(canvas, line, layout.col_x, layout.exam_y + i * (GLYPH_H + 1) * s, s,
                  color=TEXT if i else MUTED, background=None, pad=0)
    return canvas


def image_box(shape, size=DEFAULT_SIZE, axes=None, classes=None, n_lines=1):
    """(y0, x0, k): where :func:`draw_overlay` puts an image of ``shape`` (H, W) and by how much it enlarges it."""
    layout = _layout(int(size), tuple(shape[:2]), axes, list(classes or []), n_lines)
    return layout.y0, layout.x0, layout.k


class OverlayFrame(object):
    """One window's overlay before it is drawn: what the window's path hands the sinks (a few references, no
    pixels drawn), so the drawing happens on the thread that needs the pixels (:class:`deploy_jetson.sinks.
    OverlaySink`'s PNG thread).  :meth:`draw` gives :func:`draw_overlay`'s image of the same arguments (drawn
    once).  The arrays it holds must not change afterwards (the service's are new every window)."""

    __slots__ = ("image", "lines", "probabilities", "classes", "highlight", "axes", "size", "exam", "_drawn")

    def __init__(self, image, lines, probabilities=None, classes=None, highlight=None, axes=None,
                 size=DEFAULT_SIZE, exam=None):
        self.image, self.lines, self.probabilities, self.classes = image, lines, probabilities, classes
        self.highlight, self.axes, self.size, self.exam = highlight, axes, size, exam
        self._drawn = None

    def draw(self):
        if self._drawn is None:
            self._drawn = draw_overlay(self.image, self.lines, self.probabilities, self.classes, self.highlight,
                                       self.axes, self.size, self.exam)
        return self._drawn

    def with_exam(self, exam):
        """The same window's overlay with another exam caption."""
        return OverlayFrame(self.image, self.lines, self.probabilities, self.classes, self.highlight, self.axes,
                            self.size, exam)


def as_image(overlay):
    """An overlay as pixels: an :class:`OverlayFrame` drawn, an array as it is."""
    return overlay.draw() if isinstance(overlay, OverlayFrame) else overlay
