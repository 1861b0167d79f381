"""A report document: sections of text, tables and figures, written as HTML and Markdown.

The HTML file is self-contained: figures are embedded as base64 PNG ``data:`` URIs
and the stylesheet is inline, so the single file can be mailed or archived. Every
string that comes from a user (run names, labels, config values, notes) passes
through :func:`html.escape`. The Markdown file links the same figures, written as
PNG files into ``figures/`` next to it.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Table", "Image", "Section", "Document", "ReportFiles", "render_html", "render_markdown",
           "write_document"]


@dataclass
class Table:
    """Rows of cell strings under ``columns``; ``numeric`` columns are right-aligned."""

    columns: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)


@dataclass
class Image:
    """One PNG figure. ``name`` (a file-name stem) must be unique within a document."""

    name: str
    png: bytes
    alt: str
    caption: str = ""


@dataclass
class Section:
    """A heading with optional paragraphs, a table, figures and bullet notes."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: Table | None = None
    images: list[Image] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Document:
    """A whole report."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)


@dataclass
class ReportFiles:
    """Where :func:`write_document` put things."""

    html: Path
    markdown: Path
    figures: list[Path]


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 2em auto;
       max-width: 1300px; padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
p.subtitle { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #f0f3f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 0.8em 0; display: inline-block; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.88em; max-width: 900px; }
ul.notes { color: #444; font-size: 0.92em; }
"""


def render_html(doc: Document) -> str:
    """The document as one self-contained HTML page."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(doc.title)}</title>", f"<style>{_CSS}</style></head><body>",
           f"<h1>{e(doc.title)}</h1>"]
    if doc.subtitle:
        out.append(f'<p class="subtitle">{e(doc.subtitle)}</p>')
    for sec in doc.sections:
        out.append(f'<section id="{_slug(sec.title)}"><h2>{e(sec.title)}</h2>')
        out += [f"<p>{e(p)}</p>" for p in sec.paragraphs]
        if sec.table is not None:
            out.append(_html_table(sec.table))
        for img in sec.images:
            data = base64.b64encode(img.png).decode("ascii")
            out.append(f'<figure><img alt="{e(img.alt)}" src="data:image/png;base64,{data}">'
                       + (f"<figcaption>{e(img.caption)}</figcaption>" if img.caption else "") + "</figure>")
        if sec.notes:
            out.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in sec.notes) + "</ul>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in t.columns)
    body = []
    for row in t.rows:
        cells = "".join(f'<td class="num">{e(c)}</td>' if i in t.numeric else f"<td>{e(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_markdown(doc: Document, figure_dir: str = "figures") -> str:
    """The document as Markdown; images link to ``figure_dir/<name>.png``."""
    out = [f"# {_md_text(doc.title)}", ""]
    if doc.subtitle:
        out += [_md_text(doc.subtitle), ""]
    for sec in doc.sections:
        out += [f"## {_md_text(sec.title)}", ""]
        for p in sec.paragraphs:
            out += [_md_text(p), ""]
        if sec.table is not None:
            out += _md_table(sec.table) + [""]
        for img in sec.images:
            out += [f"![{_md_text(img.alt)}]({figure_dir}/{img.name}.png)", ""]
            if img.caption:
                out += [f"*{_md_text(img.caption)}*", ""]
        out += [f"- {_md_text(n)}" for n in sec.notes]
        if sec.notes:
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _md_table(t: Table) -> list[str]:
    cell = lambda s: _md_text(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in t.columns) + " |",
             "| " + " | ".join("---:" if i in t.numeric else "---" for i in range(len(t.columns))) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return lines


def _md_text(s: str) -> str:
    """Text safe to put in Markdown: no raw HTML, one line."""
    return html.escape(str(s), quote=False).replace("\n", " ")


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "section"


def write_document(doc: Document, out_dir: str | Path, stem: str = "report") -> ReportFiles:
    """Write ``<stem>.html``, ``<stem>.md`` and ``figures/*.png`` into ``out_dir``."""
    out = Path(out_dir)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    figures = []
    seen: set[str] = set()
    for sec in doc.sections:
        for img in sec.images:
            if img.name in seen:
                raise ValueError(f"two figures are named {img.name!r}")
            seen.add(img.name)
            p = figdir / f"{img.name}.png"
            p.write_bytes(img.png)
            figures.append(p)
    html_path, md_path = out / f"{stem}.html", out / f"{stem}.md"
    html_path.write_text(render_html(doc), encoding="utf-8")
    md_path.write_text(render_markdown(doc), encoding="utf-8")
    return ReportFiles(html_path, md_path, figures)

