"""What a report is written in: one document as Markdown and as self-contained HTML.

:class:`Document` accumulates the same content twice — headings, paragraphs,
tables, figures (PNG files, embedded in the HTML as base64) — and
:func:`markdown_table` renders a table for both the report and the
leaderboard. Nothing here knows what a run or a metric is: the report's
sections (:mod:`analysis.report`) and figures (:mod:`analysis.figures`)
decide what to say, this module only how it is written. Files go through the
store's atomic writes, so a full disk never leaves half a figure.
"""
from __future__ import annotations

import base64
import contextlib
import html
from pathlib import Path

import pandas as pd

from execution import store


def markdown_table(frame: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown table of ``frame`` (values as strings)."""
    if frame.empty:
        return "_(no rows)_\n"
    cells = frame.astype(str).map(lambda s: s.replace("|", "\\|").replace("\n", " "))
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _drop_empty_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns whose every cell is empty or a dash say nothing: drop them."""
    keep = [c for c in frame.columns
            if not frame[c].astype(str).str.strip().isin(["", "—", "nan", "None"]).all()]
    return frame[keep]


class Document:
    """Accumulates the same content as Markdown and as HTML."""

    def __init__(self, figure_dir: Path) -> None:
        self.md: list[str] = []
        self.html: list[str] = []
        self.figure_dir = figure_dir
        self.figures: list[Path] = []
        self.toc: list[tuple[int, str, str]] = []

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        anchor = anchor or html_anchor(text)
        if level <= 3:
            self.toc.append((level, text, anchor))
        self.html.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')

    def text(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, frame: pd.DataFrame, colours: pd.DataFrame | None = None,
              collapsed: str | None = None, caption: str | None = None) -> None:
        """A table; ``colours`` (same shape, CSS colours or '') shades HTML cells and
        marks a compact matrix (cells never wrap); ``collapsed`` puts it in a closed
        <details> with that summary in the HTML; ``caption`` is a bold line above it."""
        frame = _drop_empty_columns(frame)
        if collapsed:
            self.md.append(f"**{collapsed}**\n")
        if caption:
            self.md.append(f"**{caption}**\n")
            self.html.append(f'<p class="caption">{html.escape(caption)}</p>')
        self.md.append(markdown_table(frame))
        body = _html_table(frame, None if colours is None else colours[frame.columns])
        if collapsed:
            body = f"<details><summary>{html.escape(collapsed)}</summary>{body}</details>"
        self.html.append(body)

    @contextlib.contextmanager
    def block(self, css_class: str):
        """What is written inside sits in one ``<div class=css_class>`` in the HTML (side
        by side in a ``facets`` row); Markdown just stacks it."""
        self.html.append(f'<div class="{css_class}">')
        yield
        self.html.append("</div>")

    def figure(self, fig, name: str, caption: str) -> None:
        path = self.figure_dir / f"{name}.png"
        store.atomic_write_bytes(path, lambda p: fig.savefig(p, format="png", dpi=110,
                                                             bbox_inches="tight"))
        _close(fig)
        self.figures.append(path)
        self.md.append(f"![{caption}](figures/{path.name})\n\n_{caption}_\n")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" '
                         f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                         "</figcaption></figure>")

    def placeholder(self) -> tuple[int, int]:
        """Reserve a place (for the table of contents, written last)."""
        self.md.append("")
        self.html.append("")
        # two indices: HTML-only blocks make the lists differ in length
        return len(self.md) - 1, len(self.html) - 1

    def fill(self, index: tuple[int, int], md: str, html_text: str) -> None:
        self.md[index[0]], self.html[index[1]] = md, html_text


def html_anchor(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def _html_table(frame: pd.DataFrame, colours: pd.DataFrame | None) -> str:
    """An HTML table; a coloured one is a summary matrix, whose short cells never wrap
    (other tables wrap long cells so that they fit the window)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i in range(len(frame)):
        cells = []
        for j, column in enumerate(frame.columns):
            style = ""
            if colours is not None:
                colour = colours.iloc[i, j]
                style = f' style="background:{colour}"' if colour else ""
            cells.append(f"<td{style}>{html.escape(str(frame.iloc[i, j]))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    kind = ' class="matrix"' if colours is not None else ""
    return (f'<div class="wide"><table{kind}><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


HTML_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>gfbench report</title>
<style>body{font-family:system-ui,sans-serif;max-width:1500px;margin:2em auto;padding:0 1em;
line-height:1.4}table{border-collapse:collapse;font-size:0.76em;margin:0.6em 0}
td,th{border-bottom:1px solid #ddd;padding:2px 5px;text-align:left;vertical-align:top}
.matrix td,.matrix th{white-space:nowrap}p.caption{font-weight:600;margin:0.9em 0 0}
.facets{display:flex;flex-wrap:wrap;gap:0 2.5em;align-items:flex-start}.facet{max-width:100%}
.facet>p.caption:first-child{margin-top:0.3em}
th{position:sticky;top:0;background:#fafafa}.wide{overflow-x:auto;max-width:100%}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#555}
details{margin:0.4em 0}summary{cursor:pointer;color:#235}nav ul{columns:2}</style>
</head><body>"""
