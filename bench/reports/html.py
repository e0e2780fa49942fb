"""report.md and a self-contained report.html from tables and PNG figures.

The HTML has no external resource of any kind: images are base64 data URIs, styles and the
few lines of table-sorting script are inline, and a Content-Security-Policy forbids every
fetch, so the page renders offline and cannot phone home. A small script records, as data
attributes of the hidden element ``#report-status`` (never as visible text), how many images
loaded, how many script errors occurred, and for every table its width against its
container's (``data-table-widths``: ``index:scrollWidth/clientWidth``) and how many would scroll
sideways (``data-overflow``); the headless-browser test reads them.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    text: str
    sort: float | str | None = None  # value used when sorting (numbers sort numerically)
    sub: str = ""  # a second, smaller line (an interval, "n too small (n=3)"); markdown: after the text


@dataclass
class TableSpec:
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    note: str = ""
    #: optional header row above ``columns``: (label, number of columns it spans[, short label]);
    #: markdown prefixes each spanned column with the short label (else the label) instead
    groups: list[tuple] | None = None

    def flat_columns(self) -> list[str]:
        if not self.groups:
            return list(self.columns)
        out, i = [], 0
        for g in self.groups:
            label, span = g[0], g[1]
            short = g[2] if len(g) > 2 else label
            out += [f"{short} {c}" if short else c for c in self.columns[i:i + span]]
            i += span
        return out + list(self.columns[i:])


@dataclass
class Figure:
    name: str
    path: Path
    title: str
    text: str = ""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[TableSpec] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def cell(value: Any, fmt: str = "{:.2f}", sort: Any = None) -> Cell:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Cell("-", None)
    if isinstance(value, str):
        return Cell(value, sort if sort is not None else value)
    return Cell(fmt.format(value), sort if sort is not None else float(value))


# ---------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_cell(c: Cell) -> str:
    return _md_escape(f"{c.text} {c.sub}" if c.sub else c.text)


def render_md(title: str, intro: list[str], sections: list[Section], out_dir: Path,
              warnings: list[str] | None = None) -> str:
    lines = [f"# {title}", ""]
    lines += [f"WARNING: {w}\n" for w in warnings or []]
    lines += [p + "\n" for p in intro]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        lines += [p + "\n" for p in sec.paragraphs]
        for t in sec.tables:
            if t.title:
                lines += [f"**{t.title}**", ""]
            cols = t.flat_columns()
            lines.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
            lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|")
            for r in t.rows:
                lines.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
            lines.append("")
            if t.note:
                lines += [f"_{t.note}_", ""]
        for f in sec.figures:
            rel = f.path.relative_to(out_dir) if f.path.is_relative_to(out_dir) else f.path
            lines += [f"![{f.title}]({rel})", ""]
            if f.text:
                lines += [f"_{f.text}_", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------
# html
# ---------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1360px;
padding:16px 24px;color:#1f2328;line-height:1.45;box-sizing:border-box}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px;font-weight:600}
table{border-collapse:collapse;margin:6px 0 4px;font-size:12.5px}
th,td{border:1px solid #d0d7de;padding:2px 6px;text-align:right;vertical-align:top}
td{white-space:nowrap}
th{background:#f6f8fa;cursor:pointer;user-select:none;white-space:normal;font-weight:600;vertical-align:bottom}
th.grp{text-align:center;cursor:default;font-weight:500;color:#57606a}th.grp:empty{background:#fff;border-top-color:#fff}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
th:first-child,td:first-child,td.txt,th.txt{text-align:left}
td.txt{white-space:normal;overflow-wrap:anywhere;min-width:5em}
td .sub{display:block;color:#57606a;font-size:11px;line-height:1.2}
tr:nth-child(even) td{background:#fbfbfc}tr.all td{font-weight:600}
.tt{font-weight:600;margin-top:18px}.note{color:#57606a;font-size:12px;margin:2px 0 12px;max-width:1100px}
figure{margin:18px 0}figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:13px}
#report-status{display:none}
.wide{max-width:100%;overflow-x:auto}
"""

# Runs first, so that errors anywhere later are counted.
_HEAD_JS = """
window.__errors=0;
window.addEventListener('error',function(){window.__errors++;},true);
(function(){var e=console.error;console.error=function(){window.__errors++;return e.apply(console,arguments);};})();
"""

_BODY_JS = """
function sortTable(th){
  var table=th.closest('table'),body=table.tBodies[0],idx=Array.prototype.indexOf.call(th.parentNode.children,th);
  var asc=!th.classList.contains('asc');
  Array.prototype.forEach.call(th.parentNode.children,function(h){h.classList.remove('asc','desc');});
  th.classList.add(asc?'asc':'desc');
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){
    var x=a.cells[idx].getAttribute('data-sort'),y=b.cells[idx].getAttribute('data-sort');
    var nx=parseFloat(x),ny=parseFloat(y);
    var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y));
    if(x===''&&y!=='')c=1;if(y===''&&x!=='')c=-1;
    return asc?c:-c;});
  rows.forEach(function(r){body.appendChild(r);});
}
document.querySelectorAll('table.sortable thead tr.cols th').forEach(function(th){
  th.addEventListener('click',function(){sortTable(th);});});
function reportStatus(){
  var imgs=document.images,ok=0;
  for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0)ok++;}
  var s=document.getElementById('report-status');
  s.setAttribute('data-images',imgs.length);s.setAttribute('data-loaded',ok);
  s.setAttribute('data-errors',window.__errors);
  var over=[],widths=[];
  document.querySelectorAll('div.wide').forEach(function(d,i){
    var t=d.querySelector('table'),w=t?Math.ceil(t.getBoundingClientRect().width):0;
    widths.push(i+':'+w+'/'+d.clientWidth);
    d.setAttribute('data-width',w);d.setAttribute('data-container',d.clientWidth);
    if(w>d.clientWidth+1||d.scrollWidth>d.clientWidth+1)over.push(i+':'+Math.max(w,d.scrollWidth)+'>'+d.clientWidth);});
  s.setAttribute('data-overflow',over.length);s.setAttribute('data-overflow-detail',over.join(' '));
  s.setAttribute('data-table-widths',widths.join(' '));
  s.setAttribute('data-width',document.body.clientWidth);
  s.setAttribute('data-height',document.documentElement.scrollHeight);
  s.setAttribute('data-page-scroll',document.documentElement.scrollWidth>document.documentElement.clientWidth?1:0);
}
window.addEventListener('load',reportStatus);
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "connect-src 'none'; font-src 'none'; frame-src 'none'; form-action 'none'; base-uri 'none'")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _td(c: Cell) -> str:
    e = html.escape
    sort = e("" if c.sort is None else str(c.sort))
    sub = f'<span class="sub">{e(c.sub)}</span>' if c.sub else ""
    cls = ' class="txt"' if isinstance(c.sort, str) and c.text not in ("-",) else ""
    return f'<td data-sort="{sort}"{cls}>{e(c.text)}{sub}</td>'


def _html_table(t: TableSpec) -> str:
    e = html.escape
    head = f'<div class="tt">{e(t.title)}</div>' if t.title else ""
    out = [head + '<div class="wide"><table class="sortable"><thead>']
    if t.groups:
        spanned = sum(g[1] for g in t.groups)
        groups = [tuple(g[:2]) for g in t.groups] + [("", 1)] * (len(t.columns) - spanned)
        out.append('<tr class="groups">' + "".join(
            f'<th class="grp" colspan="{n}">{e(label)}</th>' for label, n in groups) + "</tr>")
    text_col = [sum(isinstance(r[i].sort, str) for r in t.rows if i < len(r)) * 2 > len(t.rows)
                for i in range(len(t.columns))]
    out.append('<tr class="cols">' + "".join(f'<th class="txt">{e(c)}</th>' if txt else f"<th>{e(c)}</th>"
                                             for c, txt in zip(t.columns, text_col)) + "</tr>")
    out.append("</thead><tbody>")
    for r in t.rows:
        overall = r and r[0].text == "all"
        out.append(("<tr class=\"all\">" if overall else "<tr>") + "".join(_td(c) for c in r) + "</tr>")
    out.append("</tbody></table></div>")
    if t.note:
        out.append(f'<div class="note">{e(t.note)}</div>')
    return "".join(out)


def render_html(title: str, intro: list[str], sections: list[Section], warnings: list[str] | None = None) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style><script>{_HEAD_JS}</script></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    parts += [f'<p class="warn">WARNING: {_inline(w)}</p>' for w in warnings or []]
    parts += [f"<p>{_inline(p)}</p>" for p in intro]
    nav = " · ".join(f'<a href="#s{i}">{e(s.title)}</a>' for i, s in enumerate(sections))
    parts.append(f"<p>{nav}</p>")
    for i, sec in enumerate(sections):
        parts.append(f'<h2 id="s{i}">{e(sec.title)}</h2>')
        parts += [f"<p>{_inline(p)}</p>" for p in sec.paragraphs]
        parts += [_html_table(t) for t in sec.tables]
        for f in sec.figures:
            parts.append(f'<figure id="fig-{e(f.name)}"><img decoding="sync" loading="eager" alt="{e(f.title)}" '
                         f'src="{_data_uri(f.path)}"><figcaption><b>{e(f.title)}.</b> {e(f.text)}</figcaption></figure>')
    parts.append('<div id="report-status" data-images="" data-loaded="" data-errors="" hidden></div>')
    parts.append(f"<script>{_BODY_JS}</script></body></html>")
    return "\n".join(parts)


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only markdown the intro paragraphs use)."""
    out, code = [], False
    for i, chunk in enumerate(html.escape(text).split("`")):
        if i:
            code = not code
        out.append(f"<code>{chunk}</code>" if code else chunk)
    return "".join(out)
