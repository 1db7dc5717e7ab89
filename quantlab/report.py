"""Reports: one structured document rendered as Markdown, self-contained HTML and a JSON twin.

A report is a list of blocks (heading, paragraph, table, figure) plus the dict of every number;
the Markdown links its figures as PNG files next to it, the HTML embeds them (base64), so the
HTML file can be mailed or attached to a CI run on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .atomic import write_bytes_atomic, write_text_atomic


@dataclass
class Figure:
    name: str  # file name, e.g. "sqnr.png"
    caption: str
    png: bytes


@dataclass
class Report:
    title: str
    blocks: list = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def heading(self, text: str) -> None:
        self.blocks.append(("h", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: list, rows: list) -> None:
        self.blocks.append(("table", headers, rows))

    def figure(self, figure: Optional[Figure]) -> None:
        if figure is not None:
            self.blocks.append(("fig", figure))

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out += [f"## {block[1]}", ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "table":
                headers, rows = block[1], block[2]
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "---|" * len(headers))
                out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
                out.append("")
            elif kind == "fig":
                out += [f"![{block[1].caption}]({block[1].name})", "", f"*{block[1].caption}*", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
                 "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
                 "img{max-width:100%}figcaption{color:#555;font-size:90%}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                parts.append(f"<h2>{html.escape(block[1])}</h2>")
            elif kind == "p":
                parts.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                               for row in block[2])
                parts.append(f"<table><tr>{head}</tr>{rows}</table>")
            elif kind == "fig":
                data = base64.b64encode(block[1].png).decode()
                parts.append(f"<figure><img alt='{html.escape(block[1].caption)}' "
                             f"src='data:image/png;base64,{data}'><figcaption>"
                             f"{html.escape(block[1].caption)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write report.md, report.html, report.json and the figures into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = {}
        for block in self.blocks:
            if block[0] == "fig":
                written[block[1].name] = write_bytes_atomic(folder / block[1].name, block[1].png)
        written["md"] = write_text_atomic(folder / "report.md", self.to_markdown())
        written["html"] = write_text_atomic(folder / "report.html", self.to_html())
        written["json"] = write_text_atomic(folder / "report.json", json.dumps(jsonable(self.data), indent=1) + "\n")
        return written


def jsonable(value: Any) -> Any:
    """Make a structure strict-JSON-safe: infinities and NaN become strings, numpy scalars floats."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (matplotlib is a required dependency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    fig.clf()
    return buffer.getvalue()


def sqnr_figure(tensors: list[dict], name: str = "sqnr_per_tensor.png") -> Optional[Figure]:
    """Bar chart of per-tensor SQNR in graph order (low bars are the layers that hurt)."""
    plt = _pyplot()
    if not tensors:
        return None
    values = [t["sqnr_db"] if math.isfinite(t["sqnr_db"]) else 99.0 for t in tensors]
    fig = plt.figure(figsize=(max(6, len(tensors) * 0.22), 3.6))
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color=["#c0392b" if v < 20 else "#2e86c1" for v in values])
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels([_short(t["tensor"]) for t in tensors], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB), INT8 vs FP32")
    ax.set_title("Per-tensor SQNR (red: below 20 dB)")
    png = _png(fig)
    plt.close(fig)
    return Figure(name, "Per-tensor SQNR of the INT8 model against FP32, in graph order", png)


def histogram_figure(histograms: dict, thresholds: dict[str, dict[str, float]], name: str,
                     caption: str) -> Optional[Figure]:
    """|x| histograms (log counts) with one vertical line per method's threshold."""
    plt = _pyplot()
    if not histograms:
        return None
    count = len(histograms)
    columns = min(3, count)
    rows = math.ceil(count / columns)
    fig = plt.figure(figsize=(5 * columns, 3 * rows))
    colours = ["#c0392b", "#27ae60", "#8e44ad", "#d35400", "#2c3e50", "#16a085", "#7f8c8d"]
    for index, (tensor, hist) in enumerate(histograms.items(), start=1):
        ax = fig.add_subplot(rows, columns, index)
        edges = hist.edges
        used = np.flatnonzero(hist.counts)
        top = edges[used[-1] + 1] if len(used) else edges[-1]
        lines = thresholds.get(tensor, {})
        right = max([top] + [v for v in lines.values() if math.isfinite(v)]) * 1.05
        keep = int(np.searchsorted(edges[:-1], right, side="right"))
        # One step artist, not 2048 bars: drawing stays fast. Empty bins sit on the 0.5 baseline.
        ax.stairs(np.maximum(hist.counts[:keep], 0.5), edges[:keep + 1], fill=True, baseline=0.5,
                  color="#95a5a6")
        ax.set_yscale("log")
        for colour, (method, amax) in zip(colours, lines.items()):
            ax.axvline(amax, color=colour, linewidth=1.2, label=f"{method} {amax:.3g}")
        ax.set_title(_short(tensor, 48), fontsize=8)
        ax.set_xlabel("|x|", fontsize=7)
        ax.tick_params(labelsize=6)
        if lines:
            ax.legend(fontsize=6)
    fig.tight_layout()
    png = _png(fig)
    plt.close(fig)
    return Figure(name, caption, png)


def bar_figure(labels: list[str], series: dict[str, list[float]], name: str, caption: str,
               ylabel: str) -> Optional[Figure]:
    plt = _pyplot()
    if not labels:
        return None
    fig = plt.figure(figsize=(max(6, len(labels) * 1.1), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        ax.bar(np.arange(len(labels)) + k * width, values, width=width, label=label)
    ax.set_xticks(np.arange(len(labels)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels(labels, rotation=20, fontsize=8)
    ax.set_ylabel(ylabel)
    finite = [v for vs in series.values() for v in vs if math.isfinite(v)]
    if finite:
        low, high = min(finite), max(finite)
        ax.set_ylim(max(0.0, low - (high - low) * 0.5 - 0.01), high + (high - low) * 0.2 + 0.01)
    ax.legend(fontsize=8)
    png = _png(fig)
    plt.close(fig)
    return Figure(name, caption, png)


def _short(name: str, width: int = 36) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]
