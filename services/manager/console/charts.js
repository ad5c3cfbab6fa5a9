// Minimal SVG charts for dashboard panels: the first column is x (or the label), every
// other numeric column a series. No dependencies, so the console works offline.
"use strict";
const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f6fdb", "#e8743b", "#19a979", "#945ecf", "#ed4a7b", "#13a4b4", "#6c8893"];
  const W = 500, H = 220, L = 48, R = 24, T = 10, B = 46;

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, s, anchor) {
    const t = el("text", { x, y, "text-anchor": anchor || "middle" }, parent);
    t.textContent = s;
    return t;
  }
  function fmt(v) {
    if (typeof v !== "number") return String(v);
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(2);
  }
  function label(v) {
    const s = String(v ?? "");
    const m = s.match(/^\d{4}-\d\d-\d\dT(\d\d:\d\d)/);
    if (m) return m[1];
    return s.length > 18 ? s.slice(0, 8) + "…" + s.slice(-8) : s;
  }
  function seriesOf(data) {
    return data.columns.slice(1).map((name, i) => ({
      name, color: COLORS[i % COLORS.length],
      values: data.rows.map(r => (typeof r[i + 1] === "number" ? r[i + 1] : null)),
    })).filter(s => s.values.some(v => v !== null));
  }
  function frame(series, min) {
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null) max = Math.max(max, v);
    max = max > 0 ? max : 1;
    const y = v => T + (H - T - B) * (1 - (v - min) / (max - min || 1));
    for (const f of [0, 0.5, 1]) {
      const v = min + (max - min) * f;
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eef1f5" }, svg);
      text(svg, L - 4, y(v) + 4, fmt(v), "end");
    }
    return { svg, y };
  }
  function legend(series) {
    const div = document.createElement("div");
    div.className = "legend";
    for (const s of series) {
      const span = document.createElement("span");
      span.innerHTML = `<i style="background:${s.color}"></i>`;
      span.append(s.name);
      div.appendChild(span);
    }
    return div;
  }
  function line(data, series) {
    const { svg, y } = frame(series, 0);
    const n = data.rows.length;
    const x = i => L + (n > 1 ? (W - L - R) * i / (n - 1) : (W - L - R) / 2);
    for (const s of series) {
      // a missing value breaks the line rather than bridging the gap
      const runs = [[]];
      s.values.forEach((v, i) => {
        if (v === null) { if (runs[runs.length - 1].length) runs.push([]); }
        else runs[runs.length - 1].push(`${x(i)},${y(v)}`);
      });
      for (const run of runs.filter(r => r.length))
        el("polyline", { points: run.join(" "), fill: "none", stroke: s.color, "stroke-width": 2,
                         class: "series", "data-series": s.name }, svg);
      s.values.forEach((v, i) => {
        if (v !== null) el("circle", { cx: x(i), cy: y(v), r: n > 40 ? 1.5 : 3, fill: s.color }, svg);
      });
    }
    const step = Math.max(1, Math.ceil(n / 6));
    data.rows.forEach((r, i) => { if (i % step === 0) text(svg, x(i), H - B + 16, label(r[0])); });
    return svg;
  }
  function bar(data, series) {
    const { svg, y } = frame(series, 0);
    const n = data.rows.length, k = series.length;
    const slot = (W - L - R) / n, width = Math.min(36, Math.max(2, (slot * 0.8) / k));
    data.rows.forEach((r, i) => {
      const left = L + slot * (i + 0.5) - (width * k) / 2;
      series.forEach((s, j) => {
        const v = s.values[i];
        if (v === null) return;
        const x0 = left + width * j;
        const rect = el("rect", { x: x0, y: y(v), width, height: Math.max(0, y(0) - y(v)),
                                  fill: s.color, class: "bar", "data-series": s.name }, svg);
        el("title", {}, rect).textContent = `${r[0]} · ${s.name}: ${v}`;
      });
      text(svg, L + slot * (i + 0.5), H - B + 16, label(r[0]));
    });
    return svg;
  }
  function table(data) {
    const t = document.createElement("table");
    const head = t.createTHead().insertRow();
    for (const c of data.columns) head.appendChild(document.createElement("th")).textContent = c;
    const body = t.createTBody();
    for (const r of data.rows) {
      const tr = body.insertRow();
      for (const v of r) tr.insertCell().textContent = v === null ? "" :
        (typeof v === "object" ? JSON.stringify(v) : String(v));
    }
    return t;
  }
  // Draw a panel result into `into`; returns how many rows were drawn.
  function draw(into, data) {
    into.replaceChildren();
    const series = seriesOf(data);
    if (!data.rows.length) {
      into.innerHTML = '<div class="empty">no data yet</div>';
    } else if (data.chart === "table" || !series.length) {
      into.appendChild(table(data));
    } else {
      into.appendChild((data.chart === "line" ? line : bar)(data, series));
      into.appendChild(legend(series));
    }
    return data.rows.length;
  }
  return { draw, table };
})();
