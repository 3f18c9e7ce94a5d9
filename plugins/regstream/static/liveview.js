// The live view's script: fetches the JSON of /regstream/api/* every 5 s and renders it.
"use strict";
const COLOURS = ["#0969da", "#e16f24", "#1a7f37", "#8250df", "#bf3989", "#0a7ea4"];
const VERDICT = { ok: "Healthy", warn: "Attention", bad: "Problem" };
const $ = id => document.getElementById(id);
const esc = v => String(v ?? "").replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`);
const when = iso => iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "") : "";
const ago = s => s === null || s === undefined ? "n/a"
  : s < 120 ? `${s.toFixed(s < 10 ? 1 : 0)} s` : s < 7200 ? `${(s / 60).toFixed(1)} min`
  : `${(s / 3600).toFixed(1)} h`;
let chart = null, chartKey = "";

function renderCards(h) {
  $("cards").innerHTML = h.cards.map(c => `
    <div class="card ${c.status}" data-metric="${esc(c.key)}" data-status="${c.status}">
      <div class="title"><span>${esc(c.title)}</span><span class="dot ${c.status}"></span></div>
      <div class="value">${esc(c.value)}</div>
      <div class="verdict">${esc(c.verdict)}</div>
      <div class="detail">${esc(c.detail)}</div>
      <div class="rule">${esc(c.rule)}</div>
    </div>`).join("");
  const worst = h.cards.some(c => c.status === "bad") ? "bad"
    : h.cards.some(c => c.status === "warn") ? "warn" : "ok";
  const n = h.cards.filter(c => c.status !== "ok").length;
  $("overall").className = `pill ${worst}`;
  $("overall").textContent = worst === "ok" ? "All healthy" : `${n} of ${h.cards.length} need a look`;
  $("facts").innerHTML = [
    ["watermark age", `watermark at event ${h.watermark_event_id}, moved ${ago(h.watermark_age_s)} ago`],
    ["last batch", `last micro-batch ${h.last_batch_id ?? "none"} committed ${ago(h.last_batch_age_s)} ago`],
    ["stream job", `stream job last seen ${ago(h.stream_seen_age_s)} ago`],
    ["event-time watermark", `event-time watermark ${when(h.event_time_watermark) || "n/a"}`],
    ["last count", `last count written ${ago(h.last_result_age_s)} ago`],
  ].map(([k, v]) => `<span data-metric="${k}"><b>&bull;</b> ${esc(v)}</span>`).join("");
}

function renderReconciliation(r) {
  const pill = $("recon-pill"), table = $("mismatches");
  if (!r) {
    pill.className = "pill warn"; pill.textContent = "not run yet";
    $("recon-summary").textContent = "reconcile_counts has not run yet.";
    table.hidden = true; return;
  }
  const bad = r.windows_differing > 0;
  pill.className = `pill ${bad ? "bad" : "ok"}`;
  pill.textContent = bad ? `${r.windows_differing} windows differ` : `matched ${r.windows_matched} windows`;
  $("recon-summary").innerHTML = `Last checked <b>${when(r.checked_at)}</b> (run ${r.run_id}): ` +
    `${r.windows_checked} (window, store) counts from ${when(r.range_start)} to ${when(r.range_end)}; ` +
    `source ${r.source_events} registrations &minus; ${r.late_events} too late = ` +
    `${r.source_events - r.late_events} expected, ${r.counted} counted.`;
  table.hidden = !bad;
  table.querySelector("tbody").innerHTML = r.mismatches.map(m => `
    <tr data-mismatch="${esc(m.window_start)}|${m.store_id}"><td>${when(m.window_start)} &ndash; ${when(m.window_end).slice(11)}</td>
      <td>${m.store_id}</td><td class="num">${m.counted ?? "no row"}</td><td class="num">${m.expected}</td>
      <td class="num">${m.source}</td><td class="num">${m.late}</td>
      <td class="num ${m.difference > 0 ? "diff-pos" : "diff-neg"}">${m.difference > 0 ? "+" : ""}${m.difference}</td></tr>`).join("");
}

function rows(tbody, items, cols, render) {
  tbody.innerHTML = items.length ? items.map(render).join("")
    : `<tr class="empty"><td colspan="${cols}">none</td></tr>`;
}

function renderEventLists(h) {
  $("late-count").textContent = `${h.late_events} in all`;
  $("quarantine-count").textContent = `${h.quarantined} in all`;
  rows($("late").querySelector("tbody"), h.too_late, 5, e => `
    <tr data-late-event="${e.event_id}"><td>${e.event_id}</td><td>${e.store_id}</td>
      <td>${when(e.create_date)}</td><td>${esc(e.reason)} (watermark ${when(e.event_watermark)})</td>
      <td>${when(e.seen_at)}</td></tr>`);
  rows($("quarantine").querySelector("tbody"), h.quarantine, 3, q => `
    <tr data-quarantined="${esc(q.position)}"><td>${esc(q.position)}</td><td>${esc(q.reason)}</td>
      <td>${when(q.quarantined_at)}</td></tr>`);
}

// 24-hour UTC labels; the date too when the axis spans more than a day
function timeLabels(u, splits) {
  const span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
  return splits.map(v => {
    const iso = new Date(v * 1e3).toISOString();
    return span > 86400 ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}` : iso.slice(11, 16);
  });
}

function renderChart(s) {
  const el = $("chart"), stores = Object.keys(s.stores);
  const key = `${s.window_seconds}|${stores.join(",")}`;
  if (!s.x.length) {
    if (chart) { chart.destroy(); chart = null; chartKey = ""; }
    el.innerHTML = `<p class="note">No registrations counted in the last ${s.hours} h.</p>`;
    return;
  }
  const data = [s.x, ...stores.map(k => s.stores[k])];
  if (chart && key === chartKey) { chart.setData(data); return; }
  if (chart) chart.destroy();
  el.innerHTML = "";
  chartKey = key;
  chart = new uPlot({
    width: el.clientWidth || 900, height: 300,
    tzDate: ts => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    legend: { live: false },
    axes: [{ stroke: "#59636e", grid: { stroke: "#eef1f4" }, values: timeLabels },
           { label: `registrations per ${s.window_seconds / 60} min`, stroke: "#59636e",
             grid: { stroke: "#eef1f4" },
             values: (u, ticks) => ticks.map(v => Number.isInteger(v) ? v : "") }],
    series: [{ label: "window start (UTC)" }, ...stores.map((k, i) => ({
      label: `store ${k}`, stroke: COLOURS[i % COLOURS.length], width: 2,
      fill: COLOURS[i % COLOURS.length] + "1a", paths: uPlot.paths.stepped({ align: 1 }),
      points: { show: false } }))],
  }, data, el);
}

function renderCounts(c) {
  const windows = c.windows;
  const stores = [...new Set(windows.flatMap(w => Object.keys(w.stores)))].sort();
  $("counts").querySelector("thead").innerHTML = "<tr><th>window start (UTC)</th><th>end</th>" +
    stores.map(s => `<th class="num">store ${s}</th>`).join("") + `<th class="num">total</th></tr>`;
  $("counts").querySelector("tbody").innerHTML = windows.map(w =>
    `<tr data-window="${w.window_start}"><td>${when(w.window_start)}</td><td>${when(w.window_end)}</td>` +
    stores.map(s => `<td class="num" data-store="${s}">${w.stores[s] || 0}</td>`).join("") +
    `<td class="num">${w.total}</td></tr>`).join("");
  $("note").textContent = c.note || "";
}

// the download is the table of the chosen window and range (all its windows, not only the
// 48 newest the page lists), through the same login as the page
function updateCsvLink() {
  $("csv").href = `api/counts.csv?window=${$("window").value}&hours=${$("hours").value}`;
}

async function getJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function refresh() {
  updateCsvLink();
  const win = $("window").value, hours = $("hours").value;
  try {
    const [h, s, c] = await Promise.all([getJson("api/health"),
      getJson(`api/series?window=${win}&hours=${hours}`), getJson(`api/counts?window=${win}&hours=${hours}`)]);
    renderCards(h); renderReconciliation(h.reconciliation); renderEventLists(h);
    renderChart(s); renderCounts(c);
    $("updated").textContent = `updated ${when(h.now).slice(11, 19)} UTC, every 5 s`;
  } catch (e) {
    $("updated").textContent = `refresh failed: ${e.message}`;
  }
}
$("window").addEventListener("change", refresh);
$("hours").addEventListener("change", refresh);
window.addEventListener("resize", () => chart && chart.setSize({ width: $("chart").clientWidth, height: 300 }));
refresh();
setInterval(refresh, 5000);
