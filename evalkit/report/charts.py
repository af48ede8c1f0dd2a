"""Chart geometry for the reports: plain numbers for the templates to draw as inline SVG.

Nothing here is markup: the templates place <line>/<rect>/<text> elements at these
coordinates, and autoescaping keeps every label safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Scale:
    """Linear map from data values to pixels, padded so 0 is always on the axis."""

    lo: float
    hi: float
    left: float
    right: float

    @classmethod
    def covering(cls, values: list[float | None], left: float, right: float) -> "Scale":
        """Untestable effects have no bounds (None); bounds beyond +-1e300 are drawn at the edge."""
        drawn = [_within(v) for v in values if v is not None and not math.isnan(v)]
        lo, hi = min([0.0, *drawn]), max([0.0, *drawn])
        if hi - lo < 1e-9:
            lo, hi = lo - 1, hi + 1
        pad = (hi - lo) * 0.08
        return cls(lo - pad, hi + pad, left, right)

    def __call__(self, x: float) -> float:
        x = min(max(_within(x), self.lo), self.hi)
        return round(self.left + (x - self.lo) / (self.hi - self.lo) * (self.right - self.left), 1)

    def ticks(self, count: int = 5) -> list[dict]:
        step = _nice_step((self.hi - self.lo) / count)
        start = math.ceil(self.lo / step) * step
        out, x = [], start
        while x <= self.hi + 1e-12:
            out.append({"x": self(x), "label": f"{x:g}"})
            x = round(x + step, 10)
        return out


def _within(x: float) -> float:
    """x, brought inside +-1e300 so spans and steps between values stay finite."""
    return min(max(x, -1e300), 1e300)


def _nice_step(raw: float) -> float:
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def forest(rows: list[dict], width: int = 640, row_height: int = 30, label_width: int = 150) -> dict:
    """Forest plot: per row a reference CI (grey) and a subject shift with its CI (coloured).

    Each row needs: label, shift, lo, hi, and optionally ref_mean, ref_lo, ref_hi, colour, note.
    """
    values = [v for r in rows for v in (r["lo"], r["hi"], r.get("ref_lo", 0.0), r.get("ref_hi", 0.0))]
    scale = Scale.covering(values, label_width + 10, width - 110)
    top = 24
    placed = []
    for k, r in enumerate(rows):
        y = top + k * row_height + row_height / 2
        placed.append({
            **r, "y": y, "y_ref": y + 7, "x": scale(r["shift"]), "x_lo": scale(r["lo"]), "x_hi": scale(r["hi"]),
            "x_ref": scale(r["ref_mean"]) if "ref_mean" in r else None,
            "x_ref_lo": scale(r["ref_lo"]) if "ref_lo" in r else None,
            "x_ref_hi": scale(r["ref_hi"]) if "ref_hi" in r else None,
        })
    height = top + len(rows) * row_height + 28
    return {"width": width, "height": height, "rows": placed, "zero": scale(0.0), "axis_y": height - 22,
            "ticks": scale.ticks(), "label_x": label_width, "note_x": width - 104}


def trajectory(series: list[dict], ks: list[int], width: int = 640, height: int = 220) -> dict:
    """Lines with CI bars over stack depth k. Each series: name, colour, points [{k, mean, lo, hi}]."""
    values = [v for s in series for p in s["points"] for v in (p["lo"], p["hi"])]
    y_scale = Scale.covering(values, height - 30, 16)  # pixels grow downwards
    x_left, x_right = 60, width - 150
    step = (x_right - x_left) / max(1, len(ks) - 1)
    x_of = {k: round(x_left + i * step, 1) for i, k in enumerate(ks)}
    drawn = []
    for s in series:
        pts = [{**p, "x": x_of[p["k"]], "y": y_scale(p["mean"]), "y_lo": y_scale(p["lo"]), "y_hi": y_scale(p["hi"])}
               for p in s["points"]]
        drawn.append({**s, "points": pts, "path": " ".join(f"{p['x']},{p['y']}" for p in pts)})
    return {"width": width, "height": height, "series": drawn, "zero": y_scale(0.0), "x_left": x_left,
            "x_right": x_right, "ks": [{"k": k, "x": x} for k, x in x_of.items()],
            "ticks": [{"y": y_scale(float(t["label"])), "label": t["label"]} for t in Scale(
                y_scale.lo, y_scale.hi, 0, 1).ticks()], "legend_x": x_right + 16}


def diverging_colour(value: float | None, limit: float) -> str:
    """White at 0, green for positive, red for negative, saturating at |value| = limit."""
    if value is None or not math.isfinite(value):
        return "#f4f6f9"
    t = max(-1.0, min(1.0, value / limit))
    if t >= 0:
        r, g, b = 255 - 120 * t, 255 - 50 * t, 255 - 120 * t
    else:
        r, g, b = 255 + 20 * t, 255 + 150 * t, 255 + 150 * t
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"
