"""One self-contained report.html: metadata, the summary tables and the plots, the PNGs
embedded as base64 data URIs, inline CSS, no script and no external asset, so the file
can be mailed or attached to an issue on its own. Every text is HTML-escaped (jinja2
autoescape)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import jinja2

from headway.bench.plots import Image
from headway.bench.report import TextTable

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1300px; padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #d0d0d5; padding: 0.3em 0.7em; }
th { background: #f1f1f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 0.2em 1em; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; font-family: ui-monospace, monospace;
       font-size: 0.9em; overflow-wrap: anywhere; }
ul.notes li { color: #555; } ul.notes li.warning { color: #a15c00; font-weight: 600; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #e3e3e8; }
figcaption { color: #555; font-size: 0.9em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% if metadata %}
<h2>Run</h2>
<dl class="meta">
{% for name, text in metadata %}<dt>{{ name }}</dt><dd>{{ text }}</dd>
{% endfor %}</dl>
{% endif %}
{% if notes %}
<h2>Notes</h2>
<ul class="notes">{% for n in notes %}
<li{% if n.startswith("WARNING") %} class="warning"{% endif %}>{{ n }}</li>{% endfor %}
</ul>
{% endif %}
{% if tables %}
<h2>Summary</h2>
{% for t in tables %}
<table>
<caption>{{ t.title }}</caption>
<thead><tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}<tr><th scope="row">{{ row[0] }}</th>{% for c in row[1:] %}<td{% if t.is_numeric(loop.index) %} class="num"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% if t.notes %}<ul class="notes">{% for n in t.notes %}
<li{% if n.startswith("WARNING") %} class="warning"{% endif %}>{{ n }}</li>{% endfor %}
</ul>{% endif %}
{% endfor %}
{% endif %}
{% if images %}
<h2>Plots</h2>
{% for caption, uri in images %}
<figure><img src="{{ uri }}" alt="{{ caption }}"><figcaption>{{ caption }}</figcaption></figure>
{% endfor %}
{% endif %}
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def png_data_uri(path: Path) -> str:
    """`path` (a PNG) as a data: URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(
    *,
    title: str,
    metadata: Sequence[tuple[str, str]],
    tables: Sequence[TextTable],
    images: Sequence[Image],
    notes: Sequence[str] = (),
) -> str:
    """The report page as a string, the images read and embedded."""
    return _ENV.from_string(_TEMPLATE).render(
        title=title,
        notes=list(notes),
        metadata=list(metadata),
        tables=list(tables),
        images=[(img.caption, png_data_uri(img.path)) for img in images],
    )


def write_html(
    path: Path,
    *,
    title: str,
    metadata: Sequence[tuple[str, str]],
    tables: Sequence[TextTable],
    images: Sequence[Image],
    notes: Sequence[str] = (),
) -> Path:
    """Write `render_html(...)` to `path`."""
    path.write_text(
        render_html(title=title, metadata=metadata, tables=tables, images=images, notes=notes),
        encoding="utf-8",
    )
    return path
