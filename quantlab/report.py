"""Reports: one structured document rendered as Markdown, self-contained HTML and a JSON twin.

A report is a list of blocks (heading, paragraph, table, figure) plus the dict of every number;
the Markdown links its figures as PNG files next to it, the HTML embeds them (base64), so the
HTML file can be mailed or attached to a CI run on its own.

Paragraphs and headings are Markdown text: in the HTML, `code`, **bold** and *italic* are rendered
(the subset the reports use; see ``_inline``) and everything else is escaped. Titles, table cells
and captions are plain text (tensor names, paths), escaped as they are. Every table scrolls in its
own box and images shrink to the page, so a report never gets wider than the window.

``render_html_from_files(folder)`` (or ``python -m quantlab.report FOLDER...``) rewrites a report's
HTML from its report.md and figure PNGs, as the current code would write it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .atomic import OutputSet, write_text_atomic


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
                out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
                out.append("|" + "---|" * len(headers))
                out += ["| " + " | ".join(_md_cell(_cell(v)) for v in row) + " |" for row in rows]
                out.append("")
            elif kind == "fig":
                out += [f"![{block[1].caption}]({block[1].name})", "", f"*{block[1].caption}*", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        parts = ["<!doctype html><html><head><meta charset='utf-8'>"
                 "<meta name='viewport' content='width=device-width, initial-scale=1'>"
                 f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                parts.append(f"<h2>{_inline(block[1])}</h2>")
            elif kind == "p":
                parts.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                parts.append(_html_table(block[1], block[2]))
            elif kind == "fig":
                data = base64.b64encode(block[1].png).decode()
                parts.append(f"<figure><img alt='{html.escape(block[1].caption)}' "
                             f"src='data:image/png;base64,{data}'><figcaption>"
                             f"{html.escape(block[1].caption)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, folder: str | Path, outputs: Optional[OutputSet] = None) -> dict[str, Path]:
        """Write report.md, report.html, report.json and the figures into ``folder``.

        All files are committed together (created folder included) or not at all; pass
        ``outputs`` to make them part of a larger set that the caller commits.
        """
        own = outputs is None
        outputs = OutputSet() if own else outputs
        with outputs:
            folder = outputs.make_folder(folder)
            written = {}
            for block in self.blocks:
                if block[0] == "fig":
                    written[block[1].name] = outputs.add(folder / block[1].name, block[1].png)
            written["md"] = outputs.add_text(folder / "report.md", self.to_markdown())
            written["html"] = outputs.add_text(folder / "report.html", self.to_html())
            written["json"] = outputs.add_text(folder / "report.json",
                                               json.dumps(jsonable(self.data), indent=1) + "\n")
            if own:
                outputs.commit()
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


# The page never gets wider than the window: tables scroll in their own box, images shrink,
# long unbreakable words (paths, tensor names) in prose and in table cells wrap, so a table of long
# tensor names fits the page instead of hiding its last columns behind a scroll bar.
_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
        "overflow-wrap:break-word}"
        ".table-scroll{overflow-x:auto;max-width:100%;margin:1em 0}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
        "overflow-wrap:anywhere}"
        "th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}"
        "figure{margin:1em 0;max-width:100%}img{max-width:100%;height:auto}"
        "figcaption{color:#555;font-size:90%}code{font-size:90%}")

_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|[-+]?inf|nan")


def _html_table(headers: list, rows: list) -> str:
    """A table in its own horizontally scrolling box; all-number columns right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = []
    for column in range(len(headers)):
        values = [row[column] for row in cells if column < len(row) and row[column] != ""]
        numeric.append(bool(values) and all(_NUMBER.fullmatch(v) for v in values))

    def tag(name: str, column: int, text: str) -> str:
        align = " class='num'" if column < len(numeric) and numeric[column] else ""
        return f"<{name}{align}>{html.escape(text)}</{name}>"

    head = "".join(tag("th", i, str(h)) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(tag("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in cells)
    return f"<div class='table-scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


_MD_CELL_SPECIAL = re.compile(r"([\\|*`<])")


def _md_cell(text: str) -> str:
    """A table cell as Markdown text: plain text, so the characters Markdown would read are escaped."""
    return _MD_CELL_SPECIAL.sub(r"\\\1", str(text).replace("\n", " "))


_PUNCTUATION = r"""!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~"""
_TRIPLE = re.compile(r"\*\*\*(?=[^\s*])([^*]+?)(?<=\S)\*\*\*")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.S)
_EM = re.compile(r"\*(?=[^\s*])([^*]+?)(?<=\S)\*")
_SLOT = re.compile("\x00(\\d+)\x00")


def _inline(text: str) -> str:
    """Inline Markdown as HTML: `code` spans, **bold**, *italic*, ***both*** and backslash escapes.

    The subset the reports write, read as CommonMark reads it: code spans first (their content is
    literal), a delimiter run opens only before and closes only after a non-space (``2 * 3`` is no
    emphasis), ``\\*`` is a literal asterisk; ``_`` is never emphasis (tensor names are full of it).
    All other text is HTML-escaped, and the result is always well-formed.
    """
    slots: list[str] = []

    def slot(fragment: str) -> str:
        slots.append(fragment)
        return f"\x00{len(slots) - 1}\x00"

    text = text.replace("\x00", "\ufffd")
    out, i, n = [], 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n and text[i + 1] in _PUNCTUATION:
            out.append(slot(html.escape(text[i + 1])))
            i += 2
        elif char == "`":
            run = len(text) - len(text[i:].lstrip("`")) - i
            close = _closing_backticks(text, i + run, run)
            if close < 0:  # no closing run of the same length: the backticks are literal
                out.append(slot(text[i:i + run]))
                i += run
                continue
            code = text[i + run:close].replace("\n", " ")
            if code.startswith(" ") and code.endswith(" ") and code.strip(" "):
                code = code[1:-1]
            out.append(slot(f"<code>{html.escape(code)}</code>"))
            i = close + run
        else:
            out.append(html.escape(char))
            i += 1
    escaped = "".join(out)
    escaped = _TRIPLE.sub(lambda m: slot(f"<strong><em>{m.group(1)}</em></strong>"), escaped)
    escaped = _STRONG.sub(lambda m: slot("<strong>" + _italic(m.group(1)) + "</strong>"), escaped)
    rendered = _italic(escaped)
    while _SLOT.search(rendered):  # a slot can hold slots (a code span inside ***...***)
        rendered = _SLOT.sub(lambda m: slots[int(m.group(1))], rendered)
    return rendered


def _italic(text: str) -> str:
    return _EM.sub(r"<em>\1</em>", text)


def _closing_backticks(text: str, start: int, run: int) -> int:
    """Index of the next run of exactly ``run`` backticks at or after ``start``, or -1."""
    for match in re.finditer(r"`+", text[start:]):
        if len(match.group()) == run:
            return start + match.start()
    return -1


def render_html_from_files(report_dir: str | Path) -> Path:
    """Rewrite ``report_dir``/report.html from its report.md and figure PNGs; return its path.

    The Markdown holds every block of the report (the JSON holds the numbers), so the HTML comes
    out as ``Report.write`` would write it now: use it to refresh committed reports after a change
    of the HTML rendering without re-running their (long) evaluations.
    """
    folder = Path(report_dir)
    doc = _report_from_markdown((folder / "report.md").read_text(encoding="utf-8"), folder)
    return write_text_atomic(folder / "report.html", doc.to_html())


_FIGURE = re.compile(r"!\[(.*)\]\(([^()\s]+)\)")


def _report_from_markdown(text: str, folder: Path) -> Report:
    """The blocks of a report.md written by ``Report.to_markdown`` (figures read from ``folder``)."""
    chunks = [c for c in re.split(r"\n\s*\n", text.strip("\n")) if c.strip()]
    if not chunks or not chunks[0].startswith("# "):
        raise ValueError(f"{folder / 'report.md'} does not start with a '# title' line")
    doc = Report(chunks[0][2:])
    index = 1
    while index < len(chunks):
        chunk = chunks[index]
        index += 1
        figure = _FIGURE.fullmatch(chunk)
        if chunk.startswith("## "):
            doc.heading(chunk[3:])
        elif figure:
            caption, name = figure.groups()
            if index < len(chunks) and chunks[index] == f"*{caption}*":
                index += 1
            doc.figure(Figure(name, caption, (folder / name).read_bytes()))
        elif chunk.startswith("|"):
            lines = chunk.split("\n")
            doc.table(_md_row(lines[0]), [_md_row(line) for line in lines[2:]])
        else:
            doc.paragraph(chunk)
    return doc


def _md_row(line: str) -> list[str]:
    """The cells of one ``| a | b |`` row written by ``to_markdown`` (``_md_cell`` escapes undone)."""
    cells, current, i = [], [], 0
    body = line[2:-2] if line.startswith("| ") and line.endswith(" |") else line.strip("|")
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            current.append(body[i + 1])
            i += 2
        elif body.startswith(" | ", i):
            cells.append("".join(current))
            current, i = [], i + 3
        else:
            current.append(body[i])
            i += 1
    cells.append("".join(current))
    return cells


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
    fig = histogram_plot(histograms, thresholds)
    png = _png(fig)
    plt.close(fig)
    return Figure(name, caption, png)


HISTOGRAM_COLOURS = ("#c0392b", "#27ae60", "#8e44ad", "#d35400", "#2c3e50", "#16a085", "#7f8c8d", "#2980b9")


def histogram_plot(histograms: dict, thresholds: dict[str, dict[str, float]]):
    """The figure of :func:`histogram_figure`: a panel per tensor, a line per method in one colour across
    panels, and one legend for the figure (a legend per small panel is unreadable) above the panels."""
    plt = _pyplot()
    count = len(histograms)
    columns = min(3, count)
    rows = math.ceil(count / columns)
    methods = list(dict.fromkeys(m for lines in thresholds.values() for m in lines))
    colour = {m: HISTOGRAM_COLOURS[k % len(HISTOGRAM_COLOURS)] for k, m in enumerate(methods)}
    fig = plt.figure(figsize=(5 * columns, 3 * rows + (0.6 if methods else 0)))
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
        for method, amax in lines.items():
            ax.axvline(amax, color=colour[method], linewidth=1.4, label=method)
        ax.set_title(_short(tensor, 48), fontsize=9)
        ax.set_xlabel("|x|", fontsize=8)
        ax.tick_params(labelsize=7)
    if methods:
        handles = [plt.Line2D([], [], color=colour[m], linewidth=2) for m in methods]
        fig.legend(handles, methods, loc="upper center", ncol=min(len(methods), 4), fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (3 * rows + 0.6)))
    else:
        fig.tight_layout()
    return fig


def short_labels(names: list[str]) -> list[str]:
    """The shortest ending of each ``/``-separated name that tells it apart from the others
    (``/features.3/block.0/Conv`` and ``/features.4/block.0/Conv`` -> ``features.3/block.0/Conv`` ...)."""
    parts = [[p for p in name.split("/") if p] or [name] for name in names]
    depth = [1] * len(names)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        seen: dict[str, list[int]] = {}
        for k, label in enumerate(labels):
            seen.setdefault(label, []).append(k)
        clashes = [k for group in seen.values() if len(group) > 1 for k in group if depth[k] < len(parts[k])]
        if not clashes:
            return labels
        for k in clashes:
            depth[k] += 1


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
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
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


if __name__ == "__main__":
    # python -m quantlab.report FOLDER...: re-render each report.html from its report.md and PNGs.
    for argument in sys.argv[1:]:
        print(render_html_from_files(argument))
