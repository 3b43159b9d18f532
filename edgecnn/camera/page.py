"""The page `edgecnn live --serve` shows: plain HTML, CSS and JavaScript in one document, nothing fetched from
elsewhere (an edge device is often offline). Each source's MJPEG plays in an <img>; the numbers and the latency
chart (a <canvas>) follow /stats.json, polled twice a second. The token, when the page was opened with ?token=, is
passed on to every request it makes."""

from __future__ import annotations

import json

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgecnn live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#111;color:#ddd}
header{padding:8px 14px;background:#1d1d1d;display:flex;gap:18px;align-items:baseline}
header h1{font-size:16px;margin:0;color:#fff} .dim{color:#888}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px;padding:12px}
.card{background:#1b1b1b;border:1px solid #333;border-radius:6px;padding:8px}
.card img{width:100%;background:#000;display:block;min-height:120px}
.card h2{font-size:13px;margin:0 0 6px;color:#fff;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
.nums{display:grid;grid-template-columns:repeat(4,1fr);gap:4px;margin:6px 0;font-variant-numeric:tabular-nums}
.nums div span{display:block;color:#888;font-size:11px} .nums b{font-size:15px;color:#fff}
.top{margin:0;padding:0;list-style:none} .top li{display:flex;gap:6px;align-items:center;margin:2px 0}
.bar{height:8px;background:#3c3;border-radius:2px} .top .l{width:45%;overflow:hidden;white-space:nowrap}
#chartbox{padding:0 12px 12px} canvas{width:100%;height:180px;background:#1b1b1b;border:1px solid #333}
.stale{color:#e93}
</style></head><body>
<header><h1>edgecnn live</h1><span class="dim" id="status">connecting…</span></header>
<div id="grid"></div>
<div id="chartbox"><div class="dim">frame age (solid) and inference (dotted), ms, last seconds</div>
<canvas id="chart" width="1200" height="180"></canvas></div>
<script>
const NAMES = __NAMES__;
const COLORS = ["#4c4","#49f","#f84","#e5e","#fd4","#4ee","#f55","#aaa"];
const tok = new URLSearchParams(location.search).get("token");
const q = tok ? "?token=" + encodeURIComponent(tok) : "";
const grid = document.getElementById("grid");
NAMES.forEach((name, i) => {
  const c = document.createElement("div"); c.className = "card"; c.id = "src" + i;
  c.innerHTML = '<h2></h2><img alt=""><div class="nums">' +
    ['fps','age','drops','frames'].map(k => '<div><span>' +
      {fps:'FPS',age:'frame age ms',drops:'drops',frames:'frames'}[k] +
      '</span><b class="' + k + '">–</b></div>').join('') + '</div><ul class="top"></ul>';
  c.querySelector("h2").textContent = "[" + i + "] " + name;
  c.querySelector("h2").style.color = COLORS[i % COLORS.length];
  c.querySelector("img").src = "stream/" + i + ".mjpg" + q;
  c.querySelector("img").id = "video" + i;
  grid.appendChild(c);
});
let last = null;
function draw(sources) {
  const cv = document.getElementById("chart"), g = cv.getContext("2d");
  const W = cv.width, H = cv.height; g.clearRect(0, 0, W, H);
  let tmax = 0, vmax = 10;
  sources.forEach(s => (s.history || []).forEach(p => {
    tmax = Math.max(tmax, p[0]); vmax = Math.max(vmax, p[1], p[2]); }));
  const tmin = tmax - 5; vmax *= 1.1;
  g.strokeStyle = "#333"; g.fillStyle = "#777"; g.font = "11px sans-serif";
  for (let k = 0; k <= 4; k++) { const y = H - k * H / 4; g.beginPath(); g.moveTo(0, y); g.lineTo(W, y); g.stroke();
    g.fillText((vmax * k / 4).toFixed(0), 2, y - 2); }
  sources.forEach((s, i) => [1, 2].forEach(col => {
    const pts = (s.history || []).filter(p => p[0] >= tmin); if (!pts.length) return;
    g.strokeStyle = COLORS[i % COLORS.length]; g.setLineDash(col === 2 ? [3, 3] : []); g.beginPath();
    pts.forEach((p, k) => { const x = (p[0] - tmin) / 5 * W, y = H - p[col] / vmax * H;
      k ? g.lineTo(x, y) : g.moveTo(x, y); });
    g.stroke(); }));
  g.setLineDash([]);
}
async function poll() {
  try {
    const r = await fetch("stats.json" + q, {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json(); last = d;
    document.getElementById("status").textContent =
      "up " + d.uptime_s.toFixed(0) + " s · " + d.viewers.length + " stream(s) open";
    d.sources.forEach(s => {
      const c = document.getElementById("src" + s.index); if (!c) return;
      const set = (k, v) => c.querySelector("." + k).textContent = v;
      set("fps", s.fps != null ? s.fps.toFixed(1) : "–");
      set("age", s.frame_age_ms != null ? s.frame_age_ms.toFixed(0) : "–");
      set("drops", s.dropped != null ? s.dropped : "–");
      set("frames", s.frames);
      c.querySelector(".age").className = "age" + (s.seconds_since_result > 2 ? " stale" : "");
      const ul = c.querySelector(".top"); ul.innerHTML = "";
      (s.top || []).forEach(t => { const li = document.createElement("li");
        const l = document.createElement("span"); l.className = "l"; l.textContent = t.label;
        const b = document.createElement("span"); b.className = "bar"; b.style.width = ((t.score || 0) * 40) + "%";
        const v = document.createElement("span");
        v.textContent = t.score != null ? (t.score * 100).toFixed(1) + "%" : "–";
        li.append(l, b, v); ul.appendChild(li); });
    });
    draw(d.sources);
  } catch (e) { document.getElementById("status").textContent = "not connected (" + e.message + ")"; }
  setTimeout(poll, 500);
}
poll();
</script></body></html>
"""


def render_page(names: list[str]) -> str:
    """The page for these source names (already credential-masked); JSON in a script is escaped against </script>."""
    data = json.dumps(list(names)).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return PAGE.replace("__NAMES__", data)
