"""The schedule graph as one self-contained HTML page (`mrc graph --format html`).

The page needs nothing at view time: its CSS and script are inline, the timeline is built by the
page's own few lines of plain JavaScript from data embedded as JSON, and each step pattern's
dependency graph is an inline SVG laid out here, in Python (no Graphviz needed).

    timeline   rows: each partition (per replica × partition where a technique replicates the
               model, grouped by module scope where ops have one), and the rows techniques add
               (their lanes); columns: the steps of each stage's period (the first MAX_COLUMNS,
               and the page says so); a cell holds a mark for each op that touches the row on
               that step (forward F, f without gradients; backward B; update U; and the marks the
               techniques' drawings add, mrc.ir.draw).
    patterns   each distinct step pattern once: ops in topological layers, filled by kind (the
               palette of mrc.ir.draw), value edges labelled; hovering an op shows its text, a
               click shows its details (text, kind, scope, inputs and outputs) in a panel.

The page marks itself rendered with `<body data-rendered="1">` once its script ran, and writes any
script error into `<pre id="errors">` (the browser test checks both).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from mrc.ir.draw import UNKNOWN_MARK, Cell, MarkFn, View, color_of, drawings, group_labels, palette
from mrc.ir.graph import Pattern, ScheduleGraph, _ranges
from mrc.ir.ops import Op

MAX_COLUMNS = 256
"""The timeline shows at most this many steps (of all stages together)."""


def marks() -> dict[str, tuple[str, str]]:
    """Timeline marks: code → (meaning, colour), in legend order (every technique's drawing)."""
    return {**{m: v for d in drawings() for m, v in d.marks.items()}, UNKNOWN_MARK[0]: UNKNOWN_MARK[1]}


# ---- the timeline -----------------------------------------------------------------------------


@dataclass
class _Rows:
    """The timeline's rows in display order, with group headers."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    index: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def header(self, label: str) -> None:
        self.rows.append({"kind": "group", "label": label})

    def add(self, key: tuple[Any, ...], kind: str, label: str, info: str = "") -> int:
        if key not in self.index:
            self.index[key] = len(self.rows)
            self.rows.append({"kind": kind, "label": label, "info": info})
        return self.index[key]


def _partition_scopes(graph: ScheduleGraph) -> dict[str, str]:
    """Each partition's module scope (from the scopes of the ops that name it; '' for none)."""
    out: dict[str, str] = {}
    for op in graph.ops():
        if op.scope.module:
            for name in op.partitions_used():
                out.setdefault(name, op.scope.module)
    return out


def _layer_partitions(graph: ScheduleGraph) -> list[list[str]]:
    """For each parameterised layer of graph.layers, the partitions holding its parameters."""
    out: list[list[str]] = []
    for layer in graph.layers:
        prefix = layer + "."
        out.append([n for n, info in graph.partitions.items() if any(p.startswith(prefix) for p in info.params)])
    return out


def _unknown(op: Op, view: View) -> list[Cell]:
    """An op of a kind no drawing marks: `?` on each partition it names."""
    return [Cell(UNKNOWN_MARK[0], ("p", p)) for p in op.partitions_used()]


def timeline(graph: ScheduleGraph, max_columns: int = MAX_COLUMNS) -> dict[str, Any]:
    """The timeline's data: `rows` (partition rows, the techniques' lane rows and group headers,
    in order), `columns` (stage, step, pattern for each shown step), `marks[stage][pattern]`
    (row index → [[mark, [op texts]]]), the `total` number of steps and how many are shown."""
    headers = {name: text for d in drawings() if d.replicas is not None for name, text in d.replicas(graph).items()}
    replicas = list(headers) or [""]
    scope_of = _partition_scopes(graph)
    named = [m for d in drawings() if d.groups_of_scope is not None for m in d.groups_of_scope(graph)]
    order = named + sorted({m for m in scope_of.values() if m not in named})
    lanes = [lane for d in drawings() if d.lanes is not None for lane in d.lanes(graph)]
    rows = _Rows()
    for replica in replicas:
        if replica:
            rows.header(headers[replica])
        groups = [("", [p for p in graph.partitions if not scope_of.get(p)])] + \
                 [(m, [p for p in graph.partitions if scope_of.get(p) == m]) for m in order]
        for module, parts in groups:
            if not parts:
                continue
            if module:
                rows.header(f"{replica + ' · ' if replica else ''}module {module}")
            for p in parts:
                label = f"{replica} · {p}" if replica else p
                rows.add((replica, "p", p), "partition", label, graph.partitions[p].text())
        for lane in lanes:
            rows.header(f"{replica + ' · ' if replica else ''}{lane.header}")
            for key, label in lane.rows:
                rows.add((replica, *key), "level", label)

    view = View(graph, _layer_partitions(graph))
    mark_of: dict[str, MarkFn] = {}
    for d in reversed(drawings()):  # an earlier technique's mark function wins
        mark_of.update(d.mark)
    order_of_marks = list(marks())
    cells_of: list[list[dict[int, dict[str, list[str]]]]] = []
    for stage in graph.stages:
        per_pattern = []
        for pattern in stage.patterns:
            cells: dict[int, dict[str, list[str]]] = {}

            def put(row: int, mark: str, op: Op, cells: dict[int, dict[str, list[str]]] = cells) -> None:
                text = op.text() + (f" @[{op.scope.text()}]" if not op.scope.empty else "")
                cells.setdefault(row, {}).setdefault(mark, []).append(text)

            for op in pattern.ops():
                for cell in mark_of.get(op.kind, _unknown)(op, view):
                    owners = list(op.scope.replica) or list(cell.replicas or ()) or replicas
                    for replica in owners:
                        key = (replica, *cell.row)
                        if cell.label:
                            put(rows.add(key, "level", cell.label), cell.mark, op)
                        elif key in rows.index:
                            put(rows.index[key], cell.mark, op)
            for c in cells.values():
                if "F" in c and "f" in c:  # a row both tracked and not: the tracked forward says it
                    c["F"] += c.pop("f")
            per_pattern.append({row: dict(sorted(c.items(), key=lambda mc: order_of_marks.index(mc[0])))
                                for row, c in cells.items()})
        cells_of.append(per_pattern)

    columns = [{"stage": si, "step": step, "pattern": stage.pattern_of[step]}
               for si, stage in enumerate(graph.stages) for step in range(stage.period)]
    total = len(columns)
    return {"rows": rows.rows, "columns": columns[:max_columns], "total": total,
            "stages": [{"name": s.name, "period": s.period,
                        "length": None if s.length is None else f"{s.length} {s.unit}"} for s in graph.stages],
            "marks": [[{str(r): [[m, ts] for m, ts in c.items()] for r, c in p.items()} for p in st]
                      for st in cells_of],
            "laps": graph.laps}


# ---- the dependency graph of a step pattern -------------------------------------------------------


NODE_H, LAYER_GAP, NODE_GAP, CHAR_W, PAD = 34, 34, 22, 6.6, 12
MAX_LABEL = 44


def layers_of(pattern: Pattern) -> list[list[Op]]:
    """The ops in topological layers (an op's layer: the longest path to it from an op without
    inputs), each layer ordered to keep edges short (barycentres of the layer above)."""
    ops = pattern.ops()
    depth: dict[str, int] = {}
    for op in ops:  # canonical order is topological
        depth[op.id] = max((depth[p.id] + 1 for p in pattern.preds(op)), default=0)
    layers: list[list[Op]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for op in ops:
        layers[depth[op.id]].append(op)
    position: dict[str, float] = {op.id: i for i, op in enumerate(layers[0])} if layers else {}
    for layer in layers[1:]:
        def centre(op: Op) -> float:
            ps = [position[p.id] for p in pattern.preds(op) if p.id in position]
            return sum(ps) / len(ps) if ps else float("inf")

        layer.sort(key=lambda op: (centre(op), pattern.rank(op)))
        position.update({op.id: i for i, op in enumerate(layer)})
    return layers


def _wrap(text: str, n: int = MAX_LABEL) -> list[str]:
    """A label in full, broken at spaces into lines of about `n` characters (never cut)."""
    import textwrap

    return textwrap.wrap(text, n, break_long_words=False, break_on_hyphens=False) or [""]


LINE_H = 13.0


def pattern_svg(pattern: Pattern, prefix: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """An inline SVG of the pattern's dependency graph, and the details of each op by its
    element id (`prefix/op id`). Labels are drawn in full (wrapped, never cut: learning rates
    and periods included); an edge that skips layers is routed beside the nodes between."""
    layers = layers_of(pattern)
    box: dict[str, tuple[float, float, float]] = {}  # op id → (x, y, width)
    lines = {op.id: _wrap(op.text()) + (_wrap(op.scope.text()) if op.scope.text() else []) for op in pattern.ops()}
    height_of = {i: NODE_H + LINE_H * (max(len(lines[op.id]) for op in layer) - (2 if any(
        op.scope.text() for op in layer) else 1)) for i, layer in enumerate(layers)}
    level = {op.id: i for i, layer in enumerate(layers) for op in layer}
    widths = [[max(60.0, CHAR_W * max(len(line) for line in lines[op.id]) + 2 * PAD) for op in layer]
              for layer in layers]
    total = max((sum(w) + NODE_GAP * (len(w) - 1) for w in widths), default=0.0)
    y = PAD
    tops = []
    for li, layer in enumerate(layers):
        row = sum(widths[li]) + NODE_GAP * (len(layer) - 1)
        x = PAD + (total - row) / 2
        tops.append(y)
        for op, w in zip(layer, widths[li], strict=True):
            box[op.id] = (x, y, w)
            x += w + NODE_GAP
        y += height_of[li] + LAYER_GAP
    width, height = total + 2 * PAD, y - LAYER_GAP + PAD
    marker = f"arrow-{prefix}"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="pattern-graph" width="{width:.0f}" '
           f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">',
           f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    details: dict[str, dict[str, Any]] = {}
    edges, labels = [], []
    for a, b, d in sorted(pattern.g.edges(data=True), key=lambda e: (pattern.rank(pattern.op(e[0])),
                                                                   pattern.rank(pattern.op(e[1])))):
        (xa, ya, wa), (xb, yb, wb) = box[a], box[b]
        x1, y1, x2, y2 = xa + wa / 2, ya + height_of[level[a]], xb + wb / 2, yb
        value = d["value"]
        dash = ' stroke-dasharray="4 3"' if value.kind == "order" else ""
        between = [box[op.id] for li in range(level[a] + 1, level[b]) for op in layers[li]]
        if between:  # a skip edge: around the nodes of the layers it crosses, on the nearer side
            left = min(bx for bx, _, _ in between) - NODE_GAP / 2
            right = max(bx + bw for bx, _, bw in between) + NODE_GAP / 2
            side = left if abs((x1 + x2) / 2 - left) <= abs(right - (x1 + x2) / 2) else right
            top, bottom = tops[level[a] + 1], tops[level[b] - 1] + height_of[level[b] - 1]
            path = (f"M{x1:.1f},{y1:.1f} C{x1:.1f},{top:.1f} {side:.1f},{y1:.1f} {side:.1f},{top:.1f} "
                    f"L{side:.1f},{bottom:.1f} C{side:.1f},{y2:.1f} {x2:.1f},{bottom:.1f} {x2:.1f},{y2:.1f}")
            lx, ly = side + 4, (top + bottom) / 2
        else:
            bend = max(LAYER_GAP, (y2 - y1) / 2)
            path = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + bend:.1f} {x2:.1f},{y2 - bend:.1f} {x2:.1f},{y2:.1f}"
            lx, ly = (x1 + x2) / 2 + 4, (y1 + y2) / 2 + 3
        edges.append(f'<path class="edge value-{value.kind}" d="{path}" fill="none" stroke="#555"{dash} '
                     f'marker-end="url(#{marker})"><title>{html.escape(f"{a} → {b}: {value.text()}")}</title></path>')
        if value.kind != "order":
            labels.append(f'<text class="edge-label" x="{lx:.1f}" y="{ly:.1f}">{html.escape(value.text())}</text>')
    out += edges + labels
    for op in pattern.ops():
        x, y, w = box[op.id]
        dom = f"{prefix}/{op.id}"
        scope = op.scope.text()
        ins = [f"{p.id} ({v.text()})" for p, v in pattern.inputs(op)]
        outs = [f"{s.id} ({v.text()})" for s, v in pattern.outputs(op)]
        details[dom] = {"id": op.id, "kind": op.kind, "text": op.text(), "scope": scope or "—",
                        "inputs": ins, "outputs": outs}
        tip = "\n".join([op.text(), *([f"scope: {scope}"] if scope else []),
                         *([f"inputs: {', '.join(ins)}"] if ins else [])])
        h = height_of[level[op.id]]
        main, rest = _wrap(op.text()), _wrap(scope) if scope else []
        first_y = y + (h - LINE_H * (len(main) + len(rest))) / 2 + LINE_H - 3
        spans = "".join(f'<tspan x="{x + w / 2:.1f}" y="{first_y + i * LINE_H:.1f}">{html.escape(t)}</tspan>'
                        for i, t in enumerate(main))
        scoped = "".join(f'<tspan x="{x + w / 2:.1f}" y="{first_y + (len(main) + i) * LINE_H:.1f}">'
                         f'{html.escape(t)}</tspan>' for i, t in enumerate(rest))
        out.append(f'<g class="op kind-{op.kind}" id="{html.escape(dom)}" data-op="{html.escape(dom)}" tabindex="0">'
                   f'<title>{html.escape(tip)}</title>'
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" '
                   f'fill="{color_of(op.kind)}" stroke="#333"/>'
                   f'<text text-anchor="middle" class="op-text">{spans}</text>'
                   + (f'<text text-anchor="middle" class="op-scope">{scoped}</text>' if scoped else "")
                   + "</g>")
    out.append("</svg>")
    return "".join(out), details


# ---- the page ---------------------------------------------------------------------------------------


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em 1.6em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
h3 { font-size: 1em; margin: 1em 0 .3em; }
pre.header { background: #f6f6f6; padding: .6em; font-size: 12px; overflow-x: auto; }
.legend span.chip { display: inline-block; margin: 0 .7em .3em 0; white-space: nowrap; }
.legend i { display: inline-block; width: 1.1em; height: 1.1em; vertical-align: -.2em; border: 1px solid #777;
  border-radius: 3px; margin-right: .3em; }
.scroll { overflow-x: auto; max-width: 100%; }
table.timeline { border-collapse: collapse; font-size: 12px; }
table.timeline th, table.timeline td { border: 1px solid #ddd; padding: 1px 3px; text-align: center; min-width: 1.6em; }
table.timeline th.rowname { text-align: left; position: sticky; left: 0; background: #fff; white-space: nowrap;
  font-weight: normal; z-index: 1; }
table.timeline tr.group th { text-align: left; background: #f0f0f0; font-weight: 600; position: sticky; left: 0; }
table.timeline th.step, table.timeline th.pattern-of { cursor: pointer; font-weight: normal; }
table.timeline th.stage { background: #f6f6f6; }
table.timeline tr.row-level th.rowname { font-style: italic; }
span.mark { display: inline-block; min-width: 1.1em; border-radius: 3px; border: 1px solid #888; margin: 1px;
  font: 11px/1.3 monospace; }
.note { color: #a40; }
.pattern-list { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-start; }
.pattern { margin-bottom: 1.2em; max-width: 100%; }
svg.pattern-graph { font: 11px monospace; background: #fcfcfc; border: 1px solid #ddd; }
svg.pattern-graph g.op { cursor: pointer; }
svg.pattern-graph g.op.selected rect { stroke: #d00; stroke-width: 2.5; }
svg.pattern-graph text.op-scope { font-size: 9.5px; fill: #444; }
svg.pattern-graph text.edge-label { font-size: 9.5px; fill: #333; paint-order: stroke; stroke: #fcfcfc;
  stroke-width: 3px; }
#details { position: fixed; right: 1em; bottom: 1em; max-width: 42em; background: #fff; border: 1px solid #999;
  box-shadow: 0 2px 8px rgba(0,0,0,.2); padding: .6em .8em; font-size: 12px; display: none; }
#details.open { display: block; } #details dt { font-weight: 600; } #details dd { margin: 0 0 .3em 1em; }
#errors:empty { display: none; } #errors { color: #b00; background: #fee; padding: .5em; }
"""

_JS = r"""
(function () {
  var errors = document.getElementById("errors");
  function report(msg) { errors.textContent += msg + "\n"; }
  window.onerror = function (msg, src, line, col) { report("error: " + msg + " (line " + line + ")"); };
  window.addEventListener("unhandledrejection", function (e) { report("rejection: " + e.reason); });
  var consoleError = console.error;
  console.error = function () { report("console.error: " + Array.prototype.join.call(arguments, " "));
    consoleError.apply(console, arguments); };

  var DATA = JSON.parse(document.getElementById("schedule-data").textContent);
  var T = DATA.timeline, MARKS = DATA.marks;

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  function buildTimeline() {
    var table = el("table", {"class": "timeline", "id": "timeline-table"});
    var thead = el("thead", {});
    var stageRow = el("tr", {"class": "stages"});
    stageRow.appendChild(el("th", {"class": "rowname"}, "stage"));
    var spans = [];
    T.columns.forEach(function (c) {
      if (spans.length && spans[spans.length - 1].stage === c.stage) { spans[spans.length - 1].n++; }
      else { spans.push({stage: c.stage, n: 1}); }
    });
    spans.forEach(function (s) {
      var st = T.stages[s.stage];
      stageRow.appendChild(el("th", {"class": "stage", "colspan": s.n},
        st.name + " (period " + st.period + (st.length ? ", " + st.length : "") + ")"));
    });
    var stepRow = el("tr", {"class": "steps"}), patRow = el("tr", {"class": "patterns"});
    stepRow.appendChild(el("th", {"class": "rowname"}, "step"));
    patRow.appendChild(el("th", {"class": "rowname"}, "pattern"));
    T.columns.forEach(function (c) {
      var target = "pattern-g" + c.stage + "p" + c.pattern;
      var title = "step " + c.step + " of " + T.stages[c.stage].name + ": pattern " + c.pattern;
      var th = el("th", {"class": "step", "title": title, "data-target": target}, String(c.step));
      var pt = el("th", {"class": "pattern-of", "title": title, "data-target": target}, String(c.pattern));
      [th, pt].forEach(function (h) { h.addEventListener("click", function () {
        document.getElementById(h.getAttribute("data-target")).scrollIntoView(); }); });
      stepRow.appendChild(th); patRow.appendChild(pt);
    });
    thead.appendChild(stageRow); thead.appendChild(stepRow); thead.appendChild(patRow);
    table.appendChild(thead);
    var tbody = el("tbody", {});
    T.rows.forEach(function (row, ri) {
      var tr = el("tr", {"class": row.kind === "group" ? "group" : "row-" + row.kind});
      if (row.kind === "group") {
        tr.appendChild(el("th", {"colspan": T.columns.length + 1}, row.label));
        tbody.appendChild(tr); return;
      }
      tr.appendChild(el("th", {"class": "rowname", "title": row.info || row.label}, row.label));
      T.columns.forEach(function (c) {
        var td = el("td", {"class": "cell"});
        var cell = T.marks[c.stage][c.pattern][String(ri)] || [];
        cell.forEach(function (mt) {
          var m = mt[0], texts = mt[1];
          var span = el("span", {"class": "mark", "data-mark": m,
            "title": MARKS[m][0] + " — step " + c.step + "\n" + texts.join("\n")}, m);
          span.style.background = MARKS[m][1];
          td.appendChild(span);
        });
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    document.getElementById("timeline").appendChild(table);
  }

  function buildLegend() {
    var legend = document.getElementById("mark-legend");
    DATA.used.forEach(function (m) {
      var chip = el("span", {"class": "chip"});
      var s = el("span", {"class": "mark"}, m); s.style.background = MARKS[m][1];
      chip.appendChild(s); chip.appendChild(document.createTextNode(" " + MARKS[m][0]));
      legend.appendChild(chip);
    });
  }

  function showDetails(node) {
    var d = DATA.ops[node.getAttribute("data-op")];
    var box = document.getElementById("details");
    box.innerHTML = "";
    var close = el("button", {"type": "button", "style": "float:right"}, "×");
    close.addEventListener("click", function () { box.className = ""; });
    box.appendChild(close);
    var dl = el("dl", {});
    [["op", d.id], ["kind", d.kind], ["text", d.text], ["scope", d.scope],
     ["inputs", d.inputs.join(", ") || "—"], ["outputs", d.outputs.join(", ") || "—"]].forEach(function (kv) {
      dl.appendChild(el("dt", {}, kv[0])); dl.appendChild(el("dd", {}, kv[1]));
    });
    box.appendChild(dl);
    box.className = "open";
    Array.prototype.forEach.call(document.querySelectorAll("g.op.selected"), function (g) {
      g.classList.remove("selected"); });
    node.classList.add("selected");
  }

  try {
    buildLegend();
    buildTimeline();
    Array.prototype.forEach.call(document.querySelectorAll("g.op[data-op]"), function (g) {
      g.addEventListener("click", function () { showDetails(g); });
      g.addEventListener("keydown", function (e) { if (e.key === "Enter") { showDetails(g); } });
    });
    document.body.setAttribute("data-rendered", "1");
  } catch (e) {
    report("error: " + (e && e.stack ? e.stack : e));
  }
})();
"""


def _json_script(data: Any) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


def to_html(graph: ScheduleGraph, title: str = "schedule", max_columns: int = MAX_COLUMNS) -> str:
    """The whole page: header, legends, the period's timeline and each step pattern's graph."""
    line = timeline(graph, max_columns)
    used = {m for stage in line["marks"] for p in stage for cell in p.values() for m, _ in cell}
    legend = marks()
    data = {"timeline": line, "marks": legend, "used": [m for m in legend if m in used], "ops": {}}
    sections = []
    multi = len(graph.stages) > 1
    for si, stage in enumerate(graph.stages):
        for pi, pattern in enumerate(stage.patterns):
            prefix = f"g{si}p{pi}"
            svg, details = pattern_svg(pattern, prefix)
            data["ops"].update(details)
            plural = "s" if len(pattern.steps) != 1 else ""
            head = (f"{html.escape(stage.name)} · " if multi else "") + \
                f"pattern {pi} — step{plural} {html.escape(_ranges(pattern.steps))} " \
                f"<small>({len(pattern.g)} ops)</small>"
            sections.append(f'<section class="pattern" id="pattern-{prefix}"><h3>{head}</h3>'
                            f'<div class="scroll">{svg}</div></section>')
    fills = palette()
    kinds = "".join(f'<span class="chip"><i style="background:{fills[g]}"></i>{html.escape(label)}</span>'
                    for g, label in group_labels().items())
    words = "".join(d.words(graph) for d in drawings() if d.words is not None)
    shown, total = len(line["columns"]), line["total"]
    note = f"The period has {total} steps; the first {shown} are shown." if shown < total else ""
    laps = f"<p>The stages run {graph.laps} times in order.</p>" if graph.laps > 1 else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} — mrc schedule</title>
<style>{_CSS}</style></head>
<body data-rendered="0">
<h1>{html.escape(title)}</h1>
<pre id="errors"></pre>
<details><summary>schedule header</summary>
<pre class="header">{html.escape(chr(10).join(graph.header()))}</pre></details>
<h2>Timeline of the period</h2>
{laps}<p>Each row is a partition{words};
each column a step. Hover a mark for the ops behind it; click a step for its pattern's graph.</p>
<div class="legend" id="mark-legend"></div>
<p class="note" id="timeline-note">{note}</p>
<div class="scroll" id="timeline"></div>
<h2>Step patterns</h2>
<p>Each distinct step pattern once. Hover an op for its text and inputs; click it for its details.</p>
<div class="legend">{kinds}</div>
<div class="pattern-list">{''.join(sections)}</div>
<div id="details"></div>
<script type="application/json" id="schedule-data">{_json_script(data)}</script>
<script>{_JS}</script>
</body></html>
"""


__all__ = ["MAX_COLUMNS", "layers_of", "marks", "pattern_svg", "timeline", "to_html"]
