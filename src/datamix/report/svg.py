"""Static SVG charts, drawn from the numbers: no script, no network, any browser.

A report is a file people mail to each other and open years later, so its pictures are
plain inline SVG (text and shapes) rather than a charting library's JavaScript: nothing
to load, nothing that breaks offline, and the numbers stay in the page as text beside
each chart. Every function returns one <svg> element as a string; labels are escaped.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]
STATE_COLOURS = {"done": "#59a14f", "partial": "#edc948", "failed": "#e15759", "pending": "#bab0ac"}
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt(v, digits: int = 3) -> str:
    """A number as people read it: thousands separated, a few significant digits."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{escape(label)}" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" {FONT} font-size="12">'
            f'<title>{escape(label)}</title>' + "".join(body) + "</svg>")


def _text(x, y, s, anchor="start", size=12, fill="#333", weight="normal", extra="") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{fill}" '
            f'font-weight="{weight}"{extra}>{escape(str(s))}</text>')


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def hbars(items: list[tuple[str, float]], label: str, unit: str = "", width: int = 560) -> str:
    """Horizontal bars, one per (label, value), the value written at the bar's end."""
    if not items:
        return ""
    row, left, right = 22, min(220, 12 + 7 * max(len(str(k)) for k, _ in items)), 90
    height = row * len(items) + 10
    top = max((v or 0) for _, v in items) or 1
    body = []
    for i, (k, v) in enumerate(items):
        y = 5 + i * row
        w = (width - left - right) * (v or 0) / top
        body.append(_text(left - 6, y + 15, k, anchor="end"))
        body.append(f'<rect x="{left}" y="{y + 3}" width="{max(w, 0.5):.1f}" height="{row - 6}" fill="{colour(i)}"/>')
        body.append(_text(left + w + 4, y + 15, fmt(v) + (f" {unit}" if unit else "")))
    return _svg(width, height, body, label)


def grouped_bars(categories: list[str], series: dict[str, list[float | None]], label: str, percent: bool = False,
                 width: int = 560, height: int = 240) -> str:
    """Vertical bars: per category one bar per series (e.g. requested / samples / tokens)."""
    if not categories or not series:
        return ""
    left, bottom, top_pad = 48, 40, 24
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    top = max((v or 0) for vs in series.values() for v in vs) or 1
    if percent:
        top = max(top, 1e-9)
    body = []
    for t in _ticks(0, top, 4):
        y = top_pad + plot_h * (1 - t / top)
        body.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        body.append(_text(left - 4, y + 4, f"{t:.0%}" if percent else fmt(t), anchor="end", size=10))
    group_w = plot_w / len(categories)
    bar_w = group_w * 0.8 / len(series)
    for ci, cat in enumerate(categories):
        x0 = left + ci * group_w + group_w * 0.1
        for si, (name, values) in enumerate(series.items()):
            v = values[ci] or 0
            h = plot_h * v / top
            x = x0 + si * bar_w
            body.append(f'<rect x="{x:.1f}" y="{top_pad + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{max(h, 0.5):.1f}" '
                        f'fill="{colour(si)}"><title>{escape(f"{cat} {name}: {v:.1%}" if percent else f"{cat} {name}: {fmt(v)}")}</title></rect>')
        body.append(_text(left + ci * group_w + group_w / 2, height - bottom + 16, cat, anchor="middle"))
    x = left
    for si, name in enumerate(series):
        body.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{colour(si)}"/>')
        body.append(_text(x + 14, 15, name, size=11))
        x += 24 + 7 * len(name)
    return _svg(width, height, body, label)


def histogram(edges: list[float], counts: list[int], label: str, xlabel: str = "", fill: str = PALETTE[0],
              width: int = 300, height: int = 130) -> str:
    """One distribution: bars over bins [edges[i], edges[i+1])."""
    if not counts:
        return ""
    left, bottom, top_pad = 36, 30, 8
    plot_w, plot_h = width - left - 8, height - bottom - top_pad
    top = max(counts) or 1
    body = [f'<line x1="{left}" x2="{width - 8}" y1="{top_pad + plot_h}" y2="{top_pad + plot_h}" stroke="#999"/>']
    bw = plot_w / len(counts)
    for i, c in enumerate(counts):
        h = plot_h * c / top
        body.append(f'<rect x="{left + i * bw:.1f}" y="{top_pad + plot_h - h:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                    f'height="{h:.1f}" fill="{fill}"><title>{fmt(edges[i])} to {fmt(edges[i + 1])}: {c:,}</title></rect>')
    body.append(_text(left - 4, top_pad + 9, fmt(top), anchor="end", size=10))
    body.append(_text(left, height - bottom + 13, fmt(edges[0]), size=10))
    body.append(_text(width - 8, height - bottom + 13, fmt(edges[-1]), anchor="end", size=10))
    if xlabel:
        body.append(_text(left + plot_w / 2, height - 4, xlabel, anchor="middle", size=10, fill="#666"))
    return _svg(width, height, body, label)


def lines(series: dict[str, list[tuple[float, float]]], label: str, xlabel: str, ylabel: str, width: int = 300,
          height: int = 200) -> str:
    """Curves y(x), one per series, with dots at every point (training metrics per step)."""
    pts = [p for s in series.values() for p in s if p[1] is not None]
    if not pts:
        return ""
    left, bottom, top_pad = 56, 34, 18
    plot_w, plot_h = width - left - 12, height - bottom - top_pad
    x_lo, x_hi = min(p[0] for p in pts), max(p[0] for p in pts)
    y_lo, y_hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        pad = abs(y_lo) * 0.1 or 1
        y_lo, y_hi = y_lo - pad, y_hi + pad

    def sx(x):
        return left + plot_w * (x - x_lo) / (x_hi - x_lo)

    def sy(y):
        return top_pad + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    body = []
    for t in _ticks(y_lo, y_hi, 4):
        body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
        body.append(_text(left - 4, sy(t) + 4, fmt(t), anchor="end", size=10))
    integer_x = all(float(p[0]).is_integer() for p in pts)
    for t in _ticks(x_lo, x_hi, 5):
        if not integer_x or float(t).is_integer():  # no step 1.5
            body.append(_text(sx(t), top_pad + plot_h + 14, fmt(t), anchor="middle", size=10))
    body.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top_pad + plot_h}" y2="{top_pad + plot_h}" stroke="#999"/>')
    for i, (name, s) in enumerate(series.items()):
        s = [p for p in s if p[1] is not None]
        path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(s))
        body.append(f'<path d="{path}" fill="none" stroke="{colour(i)}" stroke-width="2"/>')
        for x, y in s:
            body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour(i)}">'
                        f'<title>{escape(name)} {fmt(x)}: {fmt(y)}</title></circle>')
    body.append(_text(left + plot_w / 2, height - 4, xlabel, anchor="middle", size=10, fill="#666"))
    body.append(_text(12, top_pad + plot_h / 2, ylabel, anchor="middle", size=10, fill="#666",
                      extra=f' transform="rotate(-90 12 {top_pad + plot_h / 2:.1f})"'))
    return _svg(width, height, body, label)


def scatter(points: list[tuple[float, float, str]], label: str, xlabel: str, ylabel: str, width: int = 480,
            height: int = 300) -> str:
    """Labelled points with the axes through zero (forgetting against domain gain)."""
    pts = [p for p in points if p[0] is not None and p[1] is not None]
    if not pts:
        return ""
    left, bottom, top_pad, right = 60, 36, 16, 16
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    xs, ys = [p[0] for p in pts] + [0.0], [p[1] for p in pts] + [0.0]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    pad_x, pad_y = (x_hi - x_lo) * 0.12 or 1, (y_hi - y_lo) * 0.12 or 1
    x_lo, x_hi, y_lo, y_hi = x_lo - pad_x, x_hi + pad_x, y_lo - pad_y, y_hi + pad_y

    def sx(x):
        return left + plot_w * (x - x_lo) / (x_hi - x_lo)

    def sy(y):
        return top_pad + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    body = [f'<line x1="{sx(0):.1f}" x2="{sx(0):.1f}" y1="{top_pad}" y2="{top_pad + plot_h}" stroke="#bbb"/>',
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" stroke="#bbb"/>']
    for t in _ticks(y_lo, y_hi, 4):
        body.append(_text(left - 4, sy(t) + 4, fmt(t), anchor="end", size=10))
    for t in _ticks(x_lo, x_hi, 5):
        body.append(_text(sx(t), top_pad + plot_h + 14, fmt(t), anchor="middle", size=10))
    for i, (x, y, name) in enumerate(pts):
        body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{colour(i)}">'
                    f'<title>{escape(name)}: gain {fmt(x)}, forgetting {fmt(y)}</title></circle>')
        body.append(_text(sx(x) + 7, sy(y) - 6, name, size=10))
    body.append(_text(left + plot_w / 2, height - 4, xlabel, anchor="middle", size=11, fill="#666"))
    body.append(_text(14, top_pad + plot_h / 2, ylabel, anchor="middle", size=11, fill="#666",
                      extra=f' transform="rotate(-90 14 {top_pad + plot_h / 2:.1f})"'))
    return _svg(width, height, body, label)


def dag(nodes: list[dict], edges: list[tuple[str, str]], label: str) -> str:
    """Steps as boxes in columns by depth (a step sits right of all its inputs), with arrows.

    nodes: name, kind, state, rows_in, rows_out, seconds; edges: (parent, child)."""
    if not nodes:
        return ""
    names = [n["name"] for n in nodes]
    parents: dict[str, list[str]] = {n: [] for n in names}
    for p, c in edges:
        if p in parents and c in parents:
            parents[c].append(p)
    depth: dict[str, int] = {}

    def d(n, seen=()):
        if n not in depth:
            depth[n] = 0 if not parents[n] or n in seen else 1 + max(d(p, (*seen, n)) for p in parents[n])
        return depth[n]

    for n in names:
        d(n)
    columns: dict[int, list[str]] = {}
    for n in names:
        columns.setdefault(depth[n], []).append(n)
    # top to bottom: a layer per depth, so a long chain of steps stays narrow beside its table
    box_w, box_h, gap_x, gap_y = 160, 56, 16, 26
    width = 20 + max(len(c) for c in columns.values()) * (box_w + gap_x)
    height = 20 + len(columns) * (box_h + gap_y)
    pos = {n: (10 + col * (box_w + gap_x), 10 + row * (box_h + gap_y))
           for row, members in columns.items() for col, n in enumerate(members)}
    by_name = {n["name"]: n for n in nodes}
    body = ['<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#888"/></marker></defs>']
    for c, ps in parents.items():
        for p in ps:
            (x1, y1), (x2, y2) = pos[p], pos[c]
            x1, y1, x2, y2 = x1 + box_w / 2, y1 + box_h, x2 + box_w / 2, y2
            if y2 - y1 > box_h + gap_y:  # skips layers: around the boxes on the right, not through them
                side = width - 6
                body.append(f'<path d="M{x1 + box_w / 2:.1f},{y1 - box_h / 2:.1f} C{side:.1f},{y1:.1f} {side:.1f},{y2:.1f} '
                            f'{x2 + box_w / 2:.1f},{y2 + box_h / 2:.1f}" fill="none" stroke="#888" stroke-width="1.4" '
                            'marker-end="url(#arrow)"/>')
                continue
            mid = (y1 + y2) / 2
            body.append(f'<path d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2 - 2:.1f}" '
                        f'fill="none" stroke="#888" stroke-width="1.4" marker-end="url(#arrow)"/>')
    for n in names:
        x, y = pos[n]
        info = by_name[n]
        state = info.get("state") or "pending"
        body.append(f'<a href="#step-{escape(n)}"><g class="dag-node" data-step="{escape(n)}">'
                    f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="#fff" '
                    f'stroke="{STATE_COLOURS.get(state, "#999")}" stroke-width="2.5"/>'
                    f'<title>{escape(n)} ({escape(str(info.get("kind")))}): {escape(state)}</title>')
        body.append(_text(x + 8, y + 17, n if len(n) <= 20 else n[:19] + "…", weight="bold"))
        body.append(_text(x + box_w - 8, y + 17, info.get("kind") or "", anchor="end", size=10, fill="#777"))
        body.append(_text(x + 8, y + 34, f"{fmt(info.get('rows_in') or 0)} → {fmt(info.get('rows_out') or 0)} rows",
                          size=11))
        body.append(_text(x + 8, y + 49, f"{state} · {fmt(info.get('seconds') or 0)} s", size=10, fill="#666"))
        body.append("</g></a>")
    return _svg(width, height, body, label)
