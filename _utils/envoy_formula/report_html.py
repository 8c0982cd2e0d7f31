"""
``salt-run envoy.report format=html``: one self-contained page (styles, script and the chart
inline; no fonts or scripts fetched, so it opens on a machine without internet): the fleet table
(sortable by any column, rows red/amber/green), the adoption burndown chart (inline SVG) and one
row per service.
"""

import datetime
import html

from . import burndown, fleet_report

COLORS = {"red": "#c62828", "amber": "#e0a000", "green": "#2e7d32",
          "not started": "#c62828", "deployed": "#e0a000", "in use": "#2e7d32"}
MAX_BARS = 120
# Columns sorted as numbers: the raw value goes in data-sort (ages in seconds, health by badness).
NUMERIC = {"health": lambda r: fleet_report.HEALTH_ORDER[r["health"]], "age": lambda r: r["age_s"],
           "epoch": lambda r: r["epoch"], "uptime": lambda r: r["uptime_s"],
           "config_age": lambda r: r["config_age_s"]}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1a1a1a; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.meta { color: #555; margin-bottom: 12px; }
.counts span { display: inline-block; padding: 2px 10px; margin-right: 8px; border-radius: 10px; color: #fff; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
tr.red td:first-child { border-left: 6px solid #c62828; }
tr.amber td:first-child { border-left: 6px solid #e0a000; }
tr.green td:first-child { border-left: 6px solid #2e7d32; }
.badge { padding: 1px 8px; border-radius: 8px; color: #fff; font-size: 12px; }
td.problems { color: #444; max-width: 28em; }
"""

SCRIPT = """
(function () {
  function sortable(table) {
    var head = table.tHead.rows[0], body = table.tBodies[0];
    function key(row, index, numeric) {
      var cell = row.cells[index];
      var value = cell.hasAttribute('data-sort') ? cell.getAttribute('data-sort') : cell.textContent;
      if (!numeric) return value.toLowerCase();
      var number = parseFloat(value);
      return isNaN(number) ? Infinity : number;
    }
    function sortBy(index, direction) {
      var numeric = head.cells[index].getAttribute('data-type') === 'number';
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, index, numeric), y = key(b, index, numeric);
        return (x < y ? -1 : x > y ? 1 : 0) * direction;
      });
      rows.forEach(function (row) { body.appendChild(row); });
      Array.prototype.forEach.call(head.cells, function (cell, i) {
        cell.setAttribute('aria-sort', i === index ? (direction > 0 ? 'ascending' : 'descending') : 'none');
      });
    }
    Array.prototype.forEach.call(head.cells, function (cell, index) {
      cell.addEventListener('click', function () {
        sortBy(index, cell.getAttribute('aria-sort') === 'ascending' ? -1 : 1);
      });
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), sortable);
})();
"""


def esc(value):
    return html.escape("" if value is None else str(value), quote=True)


def when(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _table(table_id, columns, body_rows):
    """A sortable table; ``columns``: [(key, label, numeric)], ``body_rows``: [(css class, {key: (text, sort)})]."""
    head = "".join(f'<th data-key="{esc(key)}" data-type="{"number" if numeric else "text"}" aria-sort="none">'
                   f"{esc(label)}</th>" for key, label, numeric in columns)
    lines = []
    for css, cells in body_rows:
        tds = []
        for key, _label, _numeric in columns:
            text, sort = cells[key]
            attr = f' data-sort="{esc(sort)}"' if sort is not None else ""
            tds.append(f'<td class="{esc(key)}"{attr}>{text}</td>')
        lines.append(f'<tr class="{esc(css)}">{"".join(tds)}</tr>')
    return (f'<table id="{esc(table_id)}" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(lines)}</tbody></table>')


def badge(text, color_key):
    return f'<span class="badge" style="background:{COLORS[color_key]}">{esc(text)}</span>'


def fleet_table(report_rows):
    shown = fleet_report.display_rows(report_rows)
    keys = list(shown[0]) if shown else list(fleet_report.display_row(fleet_report.row("-", None, 0)))
    columns = [(key, key.replace("_", " "), key in NUMERIC) for key in keys]
    body = []
    for item, display in zip(report_rows, shown, strict=True):
        cells = {}
        for key in keys:
            raw = NUMERIC[key](item) if key in NUMERIC else None
            text = badge(display[key], item["health"]) if key == "health" else esc(display[key])
            cells[key] = (text, "" if key in NUMERIC and raw is None else raw)
        body.append((item["health"], cells))
    return _table("fleet", columns, body)


def service_table(services):
    columns = [("service", "service", False), ("state", "state", False), ("hosts", "hosts", True),
               ("deployed", "deployed (LIVE)", True), ("in_use", "in use", True),
               ("ingress_rq", "ingress requests", True), ("egress_rq", "egress requests", True),
               ("in_catalogue", "in catalogue", False)]
    body = []
    for item in services:
        counts = {key: len(item[key]) for key in ("hosts", "deployed", "in_use")}
        cells = {"service": (esc(item["service"]), None),
                 "state": (badge(item["state"], item["state"]), burndown.STATES.index(item["state"])),
                 **{key: (str(value), value) for key, value in counts.items()},
                 "ingress_rq": (esc(item["ingress_rq"] if item["ingress_rq"] is not None else "-"), item["ingress_rq"]),
                 "egress_rq": (esc(item["egress_rq"] if item["egress_rq"] is not None else "-"), item["egress_rq"]),
                 "in_catalogue": ("yes" if item["in_catalogue"] else "no", None)}
        body.append((COLOR_CLASS[item["state"]], cells))
    return _table("services", columns, body)


COLOR_CLASS = {"not started": "red", "deployed": "amber", "in use": "green"}


def _sampled(points):
    if len(points) <= MAX_BARS:
        return points
    step = len(points) / MAX_BARS
    return [points[int(i * step)] for i in range(MAX_BARS - 1)] + [points[-1]]


def burndown_svg(points, width=760, height=240):
    """Stacked columns, one per recorded point: services not started, deployed, in use."""
    left, right, top, bottom = 40, 10, 10, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    points = _sampled(points)
    parts = [f'<svg id="burndown" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="adoption burndown">']
    if not points:
        parts.append(f'<text x="{left}" y="{top + 20}">no burndown points recorded yet</text></svg>')
        return "".join(parts)
    peak = max(sum(p[s] for s in burndown.STATES) for p in points) or 1
    for tick in sorted({0, peak // 2, peak}):
        y = top + plot_h - plot_h * tick / peak
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{tick}</text>')
    slot = plot_w / len(points)
    for index, point in enumerate(points):
        x, base = left + index * slot, top + plot_h
        for state in burndown.STATES:
            size = plot_h * point[state] / peak
            if size:
                base -= size
                parts.append(f'<rect class="bar" data-state="{esc(state)}" data-count="{point[state]}" '
                             f'x="{x + slot * 0.1:.1f}" y="{base:.1f}" width="{max(slot * 0.8, 1):.1f}" '
                             f'height="{size:.1f}" fill="{COLORS[state]}"><title>{esc(when(point["at"]))}: '
                             f'{point[state]} {esc(state)}</title></rect>')
    parts.append(f'<text x="{left}" y="{height - 22}" font-size="11">{esc(when(points[0]["at"]))}</text>'
                 f'<text x="{width - right}" y="{height - 22}" font-size="11" text-anchor="end">'
                 f'{esc(when(points[-1]["at"]))}</text>')
    legend_x = left
    for state in burndown.STATES:
        parts.append(f'<rect x="{legend_x}" y="{height - 12}" width="10" height="10" fill="{COLORS[state]}"/>'
                     f'<text x="{legend_x + 14}" y="{height - 3}" font-size="11">{esc(state)}</text>')
        legend_x += 110
    parts.append("</svg>")
    return "".join(parts)


def page(report_rows, services, points, now, title="Envoy fleet"):
    counts = fleet_report.counts(report_rows)
    states = burndown.totals(services)
    count_spans = "".join(f'<span style="background:{COLORS[k]}">{v} {esc(k)}</span>' for k, v in counts.items())
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f'<div class="meta">{len(report_rows)} hosts, generated {esc(when(now))} from the Salt mine '
        "(each row's age is how old its host's last report is)</div>"
        f'<div class="counts" id="counts">{count_spans}</div>'
        f"<h2>Hosts</h2>{fleet_table(report_rows)}"
        f'<h2>Adoption burndown</h2><div class="meta" id="burndown-now">{states["in use"]} in use, '
        f'{states["deployed"]} deployed, {states["not started"]} not started</div>{burndown_svg(points)}'
        f"<h2>Services</h2>{service_table(services)}"
        f"<script>{SCRIPT}</script></body></html>\n"
    )
