"""The diff report as ONE self-contained HTML file (inline CSS, JS and SVG, no URLs).

The page shows SQNR along the network (worst layers in red), the per-layer-alone errors
when measured, the |x| histogram of a chosen tensor with its calibration threshold, and a
table of every tensor worst first. All figures are embedded as JSON in
<script id="graphkit-diff-data">, so the page is also a machine-readable record.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

WORST_N = 10
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:20px}
header .sub{opacity:.75;font-size:12px;word-break:break-all}
main{padding:18px 28px;max-width:1280px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:14px 18px;margin:0 0 18px}
h2{font-size:16px;margin:0 0 10px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:10px 16px;min-width:130px}
.card b{display:block;font-size:22px}.card span{font-size:12px;color:#667}
table{border-collapse:collapse;width:100%;font-size:12.5px}th,td{padding:4px 8px;border-bottom:1px solid #eceef2;text-align:right}
th{cursor:pointer;background:#fafbfc;position:sticky;top:0}td.l,th.l{text-align:left}
tr.worst td{background:#fdecec}tr:hover td{background:#eef4ff;cursor:pointer}
.q{color:#2563eb;font-weight:600}.f{color:#889}
.legend span{display:inline-block;margin-right:14px;font-size:12px}.sw{width:10px;height:10px;display:inline-block;margin-right:4px;border-radius:2px}
svg text{font-size:11px;fill:#556}.note{color:#667;font-size:12px}select{font-size:13px;max-width:100%}
"""

JS = """
const data = JSON.parse(document.getElementById('graphkit-diff-data').textContent);
const H = data.histograms || {};
const num = v => (v!==0 && (Math.abs(v)>=1e5 || Math.abs(v)<1e-3)) ? v.toExponential(2) : String(+v.toPrecision(4));
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function hist(name){
  const box = document.getElementById('hist'); const h = H[name];
  if(!h){box.innerHTML='<p class=note>no histogram for this tensor</p>';return;}
  const W=900, Ht=260, L=50, B=30, n=h.counts.length, up=h.upper||1;
  const logc = h.counts.map(c=>c>0?Math.log10(c+1):0), m=Math.max(1e-9,...logc);
  let s=`<svg viewBox="0 0 ${W} ${Ht}" width="100%" role="img"><title>|x| histogram of ${esc(name)}</title>`;
  const bw=(W-L-10)/n;
  logc.forEach((v,i)=>{const bh=(Ht-B-10)*v/m;
    s+=`<rect x="${L+i*bw}" y="${Ht-B-bh}" width="${Math.max(bw-0.5,0.5)}" height="${bh}" fill="#64748b"><title>[${num(i*up/n)}, ${num((i+1)*up/n)}): ${h.counts[i].toFixed(0)}</title></rect>`;});
  s+=`<line x1="${L}" y1="${Ht-B}" x2="${W-10}" y2="${Ht-B}" stroke="#999"/>`;
  for(let t=0;t<=4;t++){const x=L+t*(W-L-10)/4, a=t==0?'start':t==4?'end':'middle'; s+=`<text x="${x}" y="${Ht-B+16}" text-anchor="${a}">${num(t*up/4)}</text>`;}
  s+=`<text x="12" y="${(Ht-B)/2}" transform="rotate(-90 12 ${(Ht-B)/2})" text-anchor="middle">log10 count</text>`;
  if(h.threshold!=null){const x=L+Math.min(h.threshold/up,1)*(W-L-10);
    s+=`<line x1="${x}" y1="8" x2="${x}" y2="${Ht-B}" stroke="#dc2626" stroke-width="2" stroke-dasharray="5 3"/><text x="${x>W-160?x-4:x+4}" y="18" text-anchor="${x>W-160?'end':'start'}" fill="#dc2626" style="fill:#dc2626">threshold ${num(h.threshold)}</text>`;}
  s+='</svg>';
  const t = h.threshold!=null ? `, threshold ${num(h.threshold)} (${(100*h.threshold/h.absmax).toFixed(1)}% of max)` : ', no calibration threshold given';
  box.innerHTML = s + `<p class=note>${h.count.toLocaleString()} values, min ${num(h.min)}, max ${num(h.max)}${t}</p>`;
  document.getElementById('pick').value = name;
}
function sortBy(col, numeric){
  const tb=document.querySelector('#rows tbody'); const rows=[...tb.rows];
  const dir = tb.dataset.col==col && tb.dataset.dir=='1' ? -1 : 1; tb.dataset.col=col; tb.dataset.dir=dir;
  rows.sort((a,b)=>{let x=a.cells[col].dataset.v??a.cells[col].textContent, y=b.cells[col].dataset.v??b.cells[col].textContent;
    if(numeric){x=parseFloat(x);y=parseFloat(y);} return (x>y?1:x<y?-1:0)*dir;});
  rows.forEach(r=>tb.appendChild(r));
}
document.querySelectorAll('#rows th').forEach((th,i)=>th.onclick=()=>sortBy(i, th.dataset.num=='1'));
document.querySelectorAll('#rows tbody tr').forEach(tr=>tr.onclick=()=>{hist(tr.dataset.name);document.getElementById('histsec').scrollIntoView({behavior:'smooth'});});
const pick=document.getElementById('pick'); if(pick){pick.onchange=()=>hist(pick.value); if(pick.options.length) hist(pick.value);}
"""


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "exact"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 10**-digits or v == 0 else f"{v:.2e}"
    return str(v)


def _bar_chart(points: list[tuple[str, float | None, str, str]], title: str, y_label: str) -> str:
    """An SVG bar chart: (label, value or None = exact, colour, tooltip) along x."""
    w, h, left, bottom = 1200, 300, 54, 28
    finite = [v for _, v, _, _ in points if v is not None]
    top = (max(finite) if finite else 60.0) + 5
    low = min(0.0, min(finite) if finite else 0.0)
    span = max(top - low, 1e-9)
    n = max(len(points), 1)
    bw = (w - left - 10) / n

    def y(v: float) -> float:
        return 8 + (h - bottom - 8) * (top - v) / span

    parts = [
        (
            f'<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{html.escape(title)}">'
            f"<title>{html.escape(title)}</title>"
        )
    ]
    step = 10 if span <= 80 else 20
    tick = math.ceil(low / step) * step
    while tick <= top:
        parts.append(
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{w - 10}" y2="{y(tick):.1f}" stroke="#eceef2"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
        )
        tick += step
    parts.append(
        f'<text x="12" y="{(h - bottom) / 2}" transform="rotate(-90 12 {(h - bottom) / 2})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    base = y(max(low, 0.0))
    for i, (label, v, colour, tip) in enumerate(points):
        x = left + i * bw
        if v is None:  # exact: full-height pale bar
            parts.append(
                f'<rect x="{x:.1f}" y="{y(top):.1f}" width="{max(bw - 1, 1):.1f}" height="{base - y(top):.1f}" '
                f'fill="#d1fae5"><title>{html.escape(tip)}</title></rect>'
            )
            continue
        y0, y1 = sorted((y(v), base))
        parts.append(
            f'<rect x="{x:.1f}" y="{y0:.1f}" width="{max(bw - 1, 1):.1f}" height="{max(y1 - y0, 1):.1f}" '
            f'fill="{colour}"><title>{html.escape(tip)}</title></rect>'
        )
    parts.append(
        f'<line x1="{left}" y1="{base:.1f}" x2="{w - 10}" y2="{base:.1f}" stroke="#999"/>'
        f'<text x="{left}" y="{h - 8}">input</text><text x="{w - 10}" y="{h - 8}" text-anchor="end">output</text></svg>'
    )
    return "".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """The report dict (DiffReport.to_dict()) as a self-contained HTML page."""
    tensors = report["tensors"]
    worst = sorted((t for t in tensors if t["sqnr_db"] is not None), key=lambda t: t["sqnr_db"])[
        :WORST_N
    ]
    worst_names = {t["name"] for t in worst}
    points = []
    for t in tensors:
        colour = (
            "#dc2626" if t["name"] in worst_names else ("#2563eb" if t["quantized"] else "#94a3b8")
        )
        tip = (
            f"{t['name']} ({t['op_type']}{', quantized' if t['quantized'] else ''}): "
            f"SQNR {_fmt(t['sqnr_db'])} dB, cosine {_fmt(t['cosine'], 5)}"
        )
        points.append((t["name"], t["sqnr_db"], colour, tip))
    s = report["summary"]
    out_lines = "".join(
        f"<div class=card><b>{_fmt(m['sqnr_db'])} dB</b><span>output {html.escape(n)}<br>"
        f"cosine {_fmt(m['cosine'], 5)}</span></div>"
        for n, m in s["outputs"].items()
    )
    cards = (
        f"<div class=cards><div class=card><b>{s['tensors']}</b><span>tensors compared</span></div>"
        f"<div class=card><b>{s['quantized_layers']}</b><span>quantized layers</span></div>"
        f"<div class=card><b>{_fmt(s['median_sqnr_db'])} dB</b><span>median SQNR</span></div>"
        f"<div class=card><b>{_fmt(s['min_sqnr_db'])} dB</b><span>worst SQNR</span></div>"
        f"<div class=card><b>{report['samples']}</b><span>samples</span></div>{out_lines}</div>"
    )
    legend = (
        '<p class=legend><span><i class=sw style="background:#2563eb"></i>quantized layer</span>'
        '<span><i class=sw style="background:#94a3b8"></i>float layer</span>'
        f'<span><i class=sw style="background:#dc2626"></i>{WORST_N} worst</span>'
        '<span><i class=sw style="background:#d1fae5"></i>exact (no error)</span></p>'
    )
    body = [
        f"<section><h2>Summary</h2>{cards}</section>",
        (
            "<section><h2>SQNR along the network</h2>"
            f"{_bar_chart(points, 'SQNR per tensor in network order', 'SQNR dB')}{legend}"
            "<p class=note>Hover a bar for the tensor; higher is better (20 dB = 10% error "
            "power, 40 dB = 0.01%).</p></section>"
        ),
    ]
    if report.get("own"):
        own = [r for r in report["own"] if r.get("sqnr_db") is not None]
        own.sort(key=lambda r: r["sqnr_db"])
        rows = "".join(
            f"<tr><td class=l>{html.escape(r['node'])}</td><td class=l>{html.escape(r['op_type'])}</td>"
            f"<td>{_fmt(r['sqnr_db'])}</td><td>{_fmt(r['cosine'], 5)}</td>"
            f"<td>{_fmt(r['max_abs_err'], 4)}</td></tr>"
            for r in own[:WORST_N]
        )
        body.append(
            "<section><h2>Each quantized layer's own error</h2>"
            "<p class=note>Each layer run alone, with its input Q/DQ, on the FP32 model's "
            "inputs: the error it adds by itself, not what reaches it from upstream.</p>"
            "<table><tr><th class=l>layer</th><th class=l>op</th><th>own SQNR dB</th>"
            f"<th>cosine</th><th>max |err|</th></tr>{rows}</table></section>"
        )
    if report.get("per_layer"):
        pl = report["per_layer"]
        order = sorted(
            (r for r in pl if r["output_sqnr_db"] is not None), key=lambda r: r["output_sqnr_db"]
        )
        bad = {r["node"] for r in order[:WORST_N]}
        pts = [
            (
                r["node"],
                r["output_sqnr_db"],
                "#dc2626" if r["node"] in bad else "#2563eb",
                f"{r['node']} ({r['op_type']}) alone: output SQNR {_fmt(r['output_sqnr_db'])} dB",
            )
            for r in pl
        ]
        rows = "".join(
            f"<tr><td class=l>{html.escape(r['node'])}</td><td class=l>{html.escape(r['op_type'])}</td>"
            f"<td>{_fmt(r['output_sqnr_db'])}</td><td>{_fmt(r['output_cosine'], 5)}</td>"
            f"<td>{_fmt(r['layer_sqnr_db'])}</td></tr>"
            for r in order[:WORST_N]
        )
        body.append(
            "<section><h2>Each layer quantized alone (others float)</h2>"
            f"{_bar_chart(pts, 'output SQNR with one layer quantized', 'output SQNR dB')}"
            "<p class=note>The layers with the lowest bars hurt the output most: candidates "
            "for --keep-float.</p><table><tr><th class=l>layer</th><th class=l>op</th>"
            f"<th>output SQNR dB</th><th>output cosine</th><th>own SQNR dB</th></tr>{rows}</table></section>"
        )
    hist_names = [
        t["name"] for t in sorted(tensors, key=lambda t: (t["sqnr_db"] is None, t["sqnr_db"] or 0))
    ]
    hist_names = [n for n in hist_names if n in (report.get("histograms") or {})]
    if hist_names:
        opts = "".join(
            f'<option value="{html.escape(n, quote=True)}">{html.escape(n)}</option>'
            for n in hist_names
        )
        body.append(
            "<section id=histsec><h2>|x| histogram of a tensor (reference model)</h2>"
            f"<select id=pick>{opts}</select><div id=hist></div>"
            "<p class=note>Tensors listed worst first; click a table row to show it. The red "
            "dashed line is the calibration threshold (amax): values beyond it are clipped.</p></section>"
        )
    tensor_rows: list[str] = []
    for t in sorted(tensors, key=lambda t: (t["sqnr_db"] is None, t["sqnr_db"] or 0)):
        cls = ' class="worst"' if t["name"] in worst_names else ""
        sq = t["sqnr_db"]
        tensor_rows.append(
            f'<tr{cls} data-name="{html.escape(t["name"], quote=True)}">'
            f"<td class=l>{html.escape(t['name'])}</td><td class=l>{html.escape(t['op_type'])}</td>"
            f"<td class=l>{'<span class=q>int8</span>' if t['quantized'] else '<span class=f>float</span>'}</td>"
            f'<td data-v="{1e9 if sq is None else sq}">{_fmt(sq)}</td>'
            f"<td>{_fmt(t['cosine'], 5)}</td><td>{_fmt(t['rel_l2'], 4)}</td>"
            f'<td>{_fmt(t["max_abs_err"], 4)}</td><td data-v="{t["index"]}">{t["index"]}</td></tr>'
        )
    body.append(
        "<section><h2>Every tensor, worst first</h2><table id=rows><thead><tr>"
        "<th class=l>tensor</th><th class=l>op</th><th class=l>layer</th><th data-num=1>SQNR dB</th>"
        "<th data-num=1>cosine</th><th data-num=1>rel L2</th><th data-num=1>max |err|</th>"
        f"<th data-num=1>position</th></tr></thead><tbody>{''.join(tensor_rows)}</tbody></table></section>"
    )
    if report.get("notes"):
        body.append(
            "<section><h2>Notes</h2><ul>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"])
            + "</ul></section>"
        )
    # no "<" at all inside the script element: "</script>" would end it and "<!--" would
    # make the HTML parser ignore the real end tag; \u003c is the same JSON string
    payload = json.dumps(report, allow_nan=False).replace("<", "\\u003c")
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>graphkit diff: {html.escape(str(report['quant']))}</title><style>{CSS}</style></head><body>"
        f"<header><h1>graphkit diff ({html.escape(report['mode'])})</h1><div class=sub>reference "
        f"{html.escape(str(report['ref']))}<br>quantized {html.escape(str(report['quant']))}</div></header>"
        f"<main>{''.join(body)}</main>"
        f'<script type="application/json" id="graphkit-diff-data">{payload}</script>'
        f"<script>{JS}</script></body></html>"
    )
