"""The exam summary picture: what was heard, how each window scored, and the verdict with its rule.

One uint8 RGB image, numpy only (no PIL on the device), drawn once per exam:

    ┌──────────────────────────────────────────────────────────┐
    │ verdict (large) · rule · accepted / total seconds         │
    │ spectrograms of the exam's accepted windows, side by side │
    │ score of every window over the exam's time: P(abnormal)   │
    │ (or the top class's probability), the rule's threshold    │
    │ dashed, rejected windows as grey bars on the time axis    │
    └──────────────────────────────────────────────────────────┘
"""
import numpy as np

from deploy_jetson.overlay import GLYPH_H, GLYPH_W, draw_text

BACKGROUND = (16, 21, 28)
PANEL = (24, 32, 43)
GRID = (44, 58, 75)
TEXT = (230, 237, 243)
MUTED = (159, 176, 192)
TRACE = (79, 195, 247)
THRESHOLD = (255, 138, 101)
REJECTED = (110, 110, 110)
VERDICT_COLOURS = {"normal": (129, 199, 132), "too short": (255, 213, 79), "no signal": (159, 176, 192),
                   "poor contact": (159, 176, 192)}
ABNORMAL = (239, 83, 80)
WIDTH = 720
MARGIN = 12
TRACE_H = 140


def verdict_colour(record, normal_class=None):
    verdict = record["verdict"]
    if verdict in VERDICT_COLOURS:
        return VERDICT_COLOURS[verdict]
    if record["label"] is not None and record["label"] == normal_class:
        return VERDICT_COLOURS["normal"]
    return ABNORMAL


def _text_width(text, scale):
    return len(text) * (GLYPH_W + 1) * scale


def _line(canvas, x0, y0, x1, y1, colour, thickness=2):
    """A straight line from (x0, y0) to (x1, y1), ``thickness`` pixels, clipped to the canvas."""
    steps = int(max(abs(x1 - x0), abs(y1 - y0), 1))
    xs = np.rint(np.linspace(x0, x1, steps + 1)).astype(np.int64)
    ys = np.rint(np.linspace(y0, y1, steps + 1)).astype(np.int64)
    for dy in range(thickness):
        for dx in range(thickness):
            x, y = xs + dx - thickness // 2, ys + dy - thickness // 2
            keep = (x >= 0) & (x < canvas.shape[1]) & (y >= 0) & (y < canvas.shape[0])
            canvas[y[keep], x[keep]] = colour


def _strip(exam, palette, width, tile):
    """The accepted windows' spectrograms side by side, each upscaled (nearest) to ``tile`` pixels."""
    height = tile
    out = np.zeros((height, width, 3), dtype=np.uint8)
    out[:] = PANEL
    x = 0
    for levels in exam.strip:
        if x + tile > width:
            break
        k = max(1, tile // levels.shape[0])
        image = palette[np.repeat(np.repeat(levels, k, axis=0), k, axis=1)]
        out[:image.shape[0], x:x + image.shape[1]] = image[:height, :width - x]
        x += image.shape[1] + 2
    return out


def draw_exam(record, exam, rule, classes, palette, width=WIDTH):
    """The summary picture of one finished exam (``record``: its exams.jsonl dict; ``exam``: the
    :class:`deploy_jetson.exam.Exam`), uint8 H×W×3."""
    normal = classes[rule.normal_index] if rule.normal_index is not None else None
    tile = 96 if exam.strip else 0
    drift = record.get("drift") or {}
    header_h = 3 * GLYPH_H * 3 + 8 * 3 + (GLYPH_H + 8 if drift.get("flag") else 0)
    height = MARGIN + header_h + (tile + MARGIN if tile else 0) + TRACE_H + 2 * GLYPH_H * 2 + MARGIN
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    # header: the verdict, the rule, the durations
    y = MARGIN
    title = "exam %d: %s" % (record["exam"], record["verdict"])
    draw_text(canvas, title, MARGIN, y, 3, color=verdict_colour(record, normal), background=None, pad=0)
    y += GLYPH_H * 3 + 8
    rule_text = record["rule_text"]
    if record.get("p_abnormal") is not None and record["threshold"] is not None and record["label"] is not None:
        rule_text = "P(abnormal) %.2f %s threshold %.2f (%s)" % (
            record["p_abnormal"], ">=" if record["p_abnormal"] >= record["threshold"] else "<", record["threshold"],
            rule.basis())
    draw_text(canvas, rule_text[:width // 12], MARGIN, y, 2, color=TEXT, background=None, pad=0)
    y += GLYPH_H * 2 + 8
    rejected = ", ".join("%s %d" % kv for kv in sorted(record["windows_rejected"].items())) or "none"
    facts = "%s  %.1f s accepted of %.1f s (min %.0f s)  %d windows; rejected: %s; ended by %s%s" % (
        record["stream"], record["accepted_s"], record["duration_s"], record["min_s"], record["windows_accepted"],
        rejected, record["ended"], " (INTERRUPTED)" if record["interrupted"] else "")
    draw_text(canvas, facts[:width // 6 - 2], MARGIN, y, 1, color=MUTED, background=None, pad=0)
    if drift.get("flag"):
        y += GLYPH_H + 8
        warning = "DRIFT %.1f >= %.1f: this microphone sounds unlike the training data; adapt the model" % (
            drift["score"], drift["threshold"])
        draw_text(canvas, warning[:width // 6 - 2], MARGIN, y, 1, color=THRESHOLD, background=None, pad=0)
    y = MARGIN + header_h
    if tile:
        canvas[y:y + tile, MARGIN:width - MARGIN] = _strip(exam, palette, width - 2 * MARGIN, tile)
        y += tile + MARGIN
    _trace(canvas, record, exam, rule, y, width)
    return canvas


def _trace(canvas, record, exam, rule, top, width):
    """The per-window score over the exam's time, with the threshold and the rejected windows."""
    left, right = MARGIN + 30, width - MARGIN
    bottom = top + TRACE_H
    canvas[top:bottom, left:right] = PANEL
    for value in (0.0, 0.5, 1.0):
        y = int(round(bottom - 1 - value * (TRACE_H - 1)))
        canvas[y, left:right] = GRID
        draw_text(canvas, "%.1f" % value, MARGIN, max(top, y - GLYPH_H // 2), 1, color=MUTED, background=None, pad=0)
    t0, t1 = record["start_s"], max(record["end_s"], record["start_s"] + 1e-6)

    def x_of(t):
        return left + (right - 1 - left) * (t - t0) / (t1 - t0)

    def y_of(p):
        return bottom - 1 - p * (TRACE_H - 1)
    if rule.threshold is not None:
        y = int(round(y_of(rule.threshold)))
        for x in range(left, right, 8):
            canvas[y:y + 2, x:min(x + 4, right)] = THRESHOLD
    points = []
    for start, end, probabilities in exam.trace:
        if probabilities is None:
            canvas[bottom - 6:bottom, int(x_of(start)):max(int(x_of(end)), int(x_of(start)) + 1)] = REJECTED
            continue
        if rule.normal_index is not None:
            score = 1.0 - probabilities[rule.normal_index]
        else:
            score = max(probabilities)
        points.append((x_of(0.5 * (start + end)), y_of(score)))
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        _line(canvas, x0, y0, x1, y1, TRACE)
    for x, y in points:
        _line(canvas, x, y, x, y, TRACE, thickness=5)
    label = "P(abnormal) per window" if rule.normal_index is not None else "top-class probability per window"
    draw_text(canvas, label, left + 6, top + 4, 1, color=MUTED, background=None, pad=0)
    # time axis: seconds from the start of the stream
    span = t1 - t0
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1e9) if span / s <= 8)
    mark = np.ceil(t0 / step) * step
    while mark <= t1 + 1e-9:
        x = int(round(x_of(mark)))
        canvas[bottom:bottom + 4, x] = MUTED
        text = "%g s" % mark
        draw_text(canvas, text, min(max(left, x - _text_width(text, 1) // 2), right - _text_width(text, 1)),
                  bottom + 6, 1, color=MUTED, background=None, pad=0)
        mark += step
