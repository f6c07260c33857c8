"""What lazyaccept's HTML pages share (compare's report.html, the matrix page): the style sheet, escaping, words for
counts and lists, matplotlib figures saved with their text kept as text (inline SVG a browser and a test can read),
the provenance list and the page around a body."""

from __future__ import annotations

import html
import io
from collections.abc import Iterable, Sequence

CSS = """
body{font-family:system-ui,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
p.summary{font-size:1.05em;background:#f4f7fb;border-left:4px solid #1f77b4;padding:.6em 1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;vertical-align:top}
th{background:#eef1f5}td.name,th.name{text-align:left;white-space:nowrap}
td.fail{background:#fdecea;color:#a61b1b}td.text{text-align:left}
.small{font-size:.85em;color:#555}code{font-size:.92em}svg{max-width:100%;height:auto}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def seconds(ns: float) -> str:
    return f"{ns / 1e9:.2f} s"


def join_words(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def mpl():
    """pyplot on the Agg backend (no display), imported when a figure is drawn: the CLI starts without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, fmt: str) -> bytes:
    plt = mpl()
    buf = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "lazyaccept"}):  # text stays text, stable ids
        fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=100, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)
    return buf.getvalue()


def inline_svg(data: bytes) -> str:
    """An SVG file's <svg> element, to put in a page (without its XML declaration and doctype)."""
    text = data.decode()
    return text[text.find("<svg"):]


def definition_list(items: Iterable[tuple[str, str]]) -> str:
    """A <dl> of (term, description) pairs, both already HTML."""
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def document(title: str, body: Sequence[str], *, css: str = CSS, script: str = "") -> str:
    """A whole page: `title` is text, `body` HTML parts (one a line), `script` an inline script at the end."""
    tail = f"\n<script>{script}</script>" if script else ""
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title><style>{css}</style>"
        "</head><body>\n" + "\n".join(body) + tail + "\n</body></html>\n"
    )
