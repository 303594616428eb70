// dr2studio take browser: plain JavaScript over the JSON API of dr2studio/ui/app.py (no build step).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  project: null, take: null, detail: null, wave: null, spec: null, stem: "mix",
  loop: null, drag: null, side: "A", compare: null, jobs: new Map(), newTakes: new Set(),
};
const players = { A: $("#player-a"), B: $("#player-b") };
const SECTION_COLORS = ["#3d6fb6", "#b65f3d", "#3db68a", "#8a3db6", "#b6a23d", "#3da9b6", "#b63d74", "#6fb63d"];

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmt(t) {
  if (!isFinite(t)) return "0:00.0";
  const m = Math.floor(t / 60), s = t - m * 60;
  return `${m}:${s.toFixed(1).padStart(4, "0")}`;
}
async function api(path, options = {}) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `${res.status} ${res.statusText}`);
  return body;
}
function post(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}
function status(text) { $("#status").textContent = text || ""; }
const audioUrl = (take, stem) => `/api/takes/${encodeURIComponent(take)}/audio/${encodeURIComponent(stem)}`;

// ---------------------------------------------------------------- canvases
function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(50, Math.floor(canvas.clientWidth * ratio));
  const height = Math.floor((canvas.clientHeight || canvas.height) * ratio);
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  return canvas.getContext("2d");
}
function drawPeaks(canvas, mins, maxs, color, fraction = 1) {
  const ctx = fitCanvas(canvas), w = canvas.width, h = canvas.height, mid = h / 2;
  ctx.fillStyle = "#0f1115"; ctx.fillRect(0, 0, w, h);
  const n = mins.length, used = Math.max(1, Math.round(w * fraction));
  ctx.fillStyle = color;
  let peak = 1e-6;
  for (let i = 0; i < n; i++) peak = Math.max(peak, Math.abs(mins[i]), Math.abs(maxs[i]));
  const scale = (mid - 2) / Math.max(peak, 0.05);
  for (let x = 0; x < used; x++) {
    const i = Math.min(n - 1, Math.floor((x / used) * n));
    const top = mid - maxs[i] * scale, bottom = mid - mins[i] * scale;
    ctx.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
  ctx.fillStyle = "#2d313b"; ctx.fillRect(0, mid, w, 1);
}
function heat(v) { // 0..1 -> dark blue, purple, orange, yellow
  const stops = [[15, 17, 21], [40, 30, 110], [150, 40, 120], [240, 120, 40], [255, 240, 150]];
  const x = Math.min(0.9999, Math.max(0, v)) * (stops.length - 1), i = Math.floor(x), f = x - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}
function drawSpectrogram(canvas, spec) {
  const ctx = fitCanvas(canvas), w = canvas.width, h = canvas.height;
  const bytes = Uint8Array.from(atob(spec.data), (c) => c.charCodeAt(0));
  const image = ctx.createImageData(w, h);
  for (let x = 0; x < w; x++) {
    const f = Math.min(spec.frames - 1, Math.floor((x / w) * spec.frames));
    for (let y = 0; y < h; y++) {
      const b = Math.min(spec.bins - 1, Math.floor(((h - 1 - y) / h) * spec.bins));
      const [r, g, bl] = heat(bytes[f * spec.bins + b] / 255);
      const o = (y * w + x) * 4;
      image.data[o] = r; image.data[o + 1] = g; image.data[o + 2] = bl; image.data[o + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}
function drawRuler() {
  const canvas = $("#ruler"), ctx = fitCanvas(canvas), w = canvas.width, h = canvas.height;
  const tl = state.detail.timeline, dur = tl.duration || 1, r = window.devicePixelRatio || 1;
  const X = (t) => (t / dur) * w;
  ctx.fillStyle = "#14161b"; ctx.fillRect(0, 0, w, h);
  ctx.font = `${11 * r}px system-ui, sans-serif`; ctx.textBaseline = "top";
  // sections: coloured bands with their labels (bottom half)
  tl.sections.forEach((s, i) => {
    const x0 = X(s.start), x1 = X(s.end);
    ctx.fillStyle = SECTION_COLORS[i % SECTION_COLORS.length]; ctx.globalAlpha = 0.75;
    ctx.fillRect(x0, h * 0.5, Math.max(1, x1 - x0 - 1), h * 0.5);
    ctx.globalAlpha = 1; ctx.fillStyle = "#fff";
    ctx.save(); ctx.beginPath(); ctx.rect(x0, h * 0.5, x1 - x0, h * 0.5); ctx.clip();
    ctx.fillText(s.label, x0 + 3 * r, h * 0.5 + 4 * r); ctx.restore();
  });
  // model blocks: short ticks under the bar line
  ctx.fillStyle = "#8a93a8";
  for (const t of tl.blocks) ctx.fillRect(X(t), h * 0.34, Math.max(1, r), h * 0.14);
  // bars (or seconds when the tempo is unknown): ticks and numbers on top
  ctx.fillStyle = "#c9cdd6";
  if (tl.bars.length) {
    const every = Math.max(1, Math.ceil(tl.bars.length / (w / (28 * r))));
    tl.bars.forEach((b, i) => {
      ctx.fillRect(X(b.time), 0, 1, i % every ? h * 0.15 : h * 0.3);
      if (i % every === 0) ctx.fillText(String(b.bar), X(b.time) + 2 * r, 2 * r);
    });
  } else {
    const step = dur > 120 ? 10 : dur > 30 ? 5 : 1;
    for (let t = 0; t <= dur; t += step) { ctx.fillRect(X(t), 0, 1, h * 0.3); ctx.fillText(`${t}s`, X(t) + 2 * r, 2 * r); }
  }
  // edits: splice points and regenerated spans
  ctx.fillStyle = "#ffb35f";
  for (const e of tl.edits) {
    if (e.kind === "extend" && e.splice != null) ctx.fillRect(X(e.splice), 0, 2 * r, h);
    if (e.kind === "infill" && e.start != null) { ctx.globalAlpha = 0.35; ctx.fillRect(X(e.start), 0, X(e.end) - X(e.start), h * 0.5); ctx.globalAlpha = 1; }
  }
}
function drawWave() {
  if (!state.wave) return;
  const canvas = $("#wave");
  drawPeaks(canvas, state.wave.min, state.wave.max, "#5fb3ff");
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, dur = state.wave.duration || 1;
  if (state.loop) {
    ctx.fillStyle = "rgba(255,179,95,0.22)";
    ctx.fillRect((state.loop[0] / dur) * w, 0, ((state.loop[1] - state.loop[0]) / dur) * w, h);
  }
  const t = activePlayer().currentTime || 0;
  ctx.fillStyle = "#fff"; ctx.fillRect((t / dur) * w, 0, 2, h);
}

// ---------------------------------------------------------------- take list
function overallOf(current) { // the store keeps the four dimensions; "overall" shows their mean
  const values = Object.values(current || {}).filter((v) => v != null);
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
}
function stars(value) {
  if (value == null) return "";
  const n = Math.round(value);
  return "★".repeat(n) + "☆".repeat(Math.max(0, 5 - n));
}
async function loadProject(select) {
  const project = await api("/api/project");
  state.project = project;
  $("#project-name").textContent = project.name;
  $("#engine").textContent = project.engine ? `engine ${project.engine}` : "read-only (no model)";
  $("#take-count").textContent = `(${project.takes.length})`;
  const list = $("#takes");
  list.innerHTML = "";
  const compare = $("#compare"), chosen = compare.value;
  compare.innerHTML = '<option value="">—</option>';
  for (const t of project.takes) {
    const li = document.createElement("li");
    li.className = "take"; li.dataset.take = t.take;
    if (state.newTakes.has(t.take)) li.classList.add("new");
    const rating = overallOf(project.ratings[t.take]);
    const what = t.action ? `${t.action.replace("_", " ")} of ${t.parent_take}` : (t.kind || t.origin || "");
    li.innerHTML = `<div class="name">${esc(t.take)}</div>
      <div class="info">${esc(what)} · ${fmt(t.duration_seconds || 0)} · seed ${esc(t.seed ?? "—")}
      <span class="stars-mini">${stars(rating)}</span></div>
      <canvas class="mini-wave" height="32"></canvas>`;
    li.addEventListener("click", () => selectTake(t.take));
    list.appendChild(li);
    const opt = document.createElement("option"); opt.value = t.take; opt.textContent = t.take; compare.appendChild(opt);
    miniWave(li.querySelector("canvas"), t);
  }
  compare.value = chosen;
  $("#empty").hidden = project.takes.length > 0;
  const keep = select || state.take || (project.takes[0] && project.takes[0].take);
  if (keep) await selectTake(keep);
  else $("#detail").hidden = true;
}
async function miniWave(canvas, take) {
  const stem = take.stems.includes("mix") ? "mix" : take.stems[0];
  if (!stem) return;
  try {
    const wave = await api(`/api/takes/${encodeURIComponent(take.take)}/waveform/${encodeURIComponent(stem)}?points=300`);
    drawPeaks(canvas, wave.min, wave.max, "#7f8aa3");
    canvas.dataset.drawn = "1";
  } catch (err) { canvas.title = err.message; }
}

// ---------------------------------------------------------------- one take
async function selectTake(name) {
  const detail = await api(`/api/takes/${encodeURIComponent(name)}`);
  const changed = state.take !== name;
  state.take = name; state.detail = detail;
  document.querySelectorAll("#takes .take").forEach((li) => li.classList.toggle("selected", li.dataset.take === name));
  $("#detail").hidden = false;
  const e = detail.take;
  $("#take-title").textContent = e.take;
  $("#act-style").placeholder = e.style || "the take's own (its sidecar's style)";
  $("#take-meta").textContent = `${e.origin}${e.kind ? " · " + e.kind : ""} · ${fmt(e.duration_seconds || 0)} · ` +
    `${e.sample_rate} Hz · at ${(e.position_seconds || 0).toFixed(2)} s · ${e.created}`;
  const stems = Object.keys(e.files || {});
  if (changed) { state.stem = stems.includes("mix") ? "mix" : stems[0]; state.loop = null; $("#loop").checked = false; updateLoopText(); }
  $("#stem").innerHTML = stems.map((s) => `<option ${s === state.stem ? "selected" : ""}>${esc(s)}</option>`).join("");
  renderLyrics(); renderSettings(); renderHistory(); renderStems(); renderRatings();
  drawRuler();
  const tl = detail.timeline;
  $("#ruler-note").textContent = `${tl.bpm ? `${tl.bpm} bpm, ${tl.timesig.join("/")} · ` : "tempo unknown: seconds · "}` +
    `sections ${tl.section_timing === "lrc" ? "from the lyrics' time stamps" : "estimated from the lyrics (the model is not aligned to words)"}` +
    `${tl.block_seconds ? ` · ticks: the model's ${tl.block_seconds.toFixed(2)} s blocks` : ""}`;
  if (changed) await loadStem(state.stem);
  else drawWave();
}
async function loadStem(stem) {
  const keep = players.A.currentTime || 0, playing = !activePlayer().paused;
  state.stem = stem;
  $("#wave").dataset.drawn = ""; $("#spec").dataset.drawn = "";
  const base = `/api/takes/${encodeURIComponent(state.take)}`;
  players.A.src = audioUrl(state.take, stem);
  players.A.currentTime = keep;
  if (state.side === "A" && playing) players.A.play().catch(() => {});
  const [wave, spec] = await Promise.all([
    api(`${base}/waveform/${encodeURIComponent(stem)}?points=1500`),
    api(`${base}/spectrogram/${encodeURIComponent(stem)}?frames=500&bins=96`),
  ]);
  state.wave = wave; state.spec = spec;
  drawWave(); drawSpectrogram($("#spec"), spec);
  $("#wave").dataset.drawn = "1"; $("#spec").dataset.drawn = "1";
}
function renderLyrics() {
  const tl = state.detail.timeline, box = $("#lyrics"), select = $("#regen-section");
  box.innerHTML = tl.sections.map((s, i) => `<div class="section" data-section="${i}">
      <span class="label" style="color:${SECTION_COLORS[i % SECTION_COLORS.length]}">${esc(s.label)}</span>
      <span class="when">${fmt(s.start)}–${fmt(s.end)}</span>
      <button class="small play-section" data-section="${i}">▶</button>
      ${s.lines.map((l) => `<p>${esc(l)}</p>`).join("")}</div>`).join("") || '<span class="muted">no lyrics recorded</span>';
  box.querySelectorAll(".play-section").forEach((b) => b.addEventListener("click", () => {
    const s = tl.sections[+b.dataset.section];
    setLoop(s.start, s.end); $("#loop").checked = true; seek(s.start); play();
  }));
  select.innerHTML = tl.sections.map((s, i) => `<option value="${i}">${esc(s.label)} (${fmt(s.start)}–${fmt(s.end)})</option>`).join("");
}
function row(k, v) { return `<tr><td class="k">${esc(k)}</td><td>${esc(v)}</td></tr>`; }
function renderSettings() {
  const e = state.detail.take, s = e.settings || {}, last = (s.edits || []).slice(-1)[0] || {};
  const rows = [row("seed", e.seed ?? "—"), row("style", e.style ?? "—"), row("model", e.model ?? "—"),
    row("steps", s.steps ?? last.steps ?? "—"), row("guidance (cfg)", s.cfg_strength ?? last.cfg_strength ?? "—"),
    row("tempo", s.tempo_bpm ?? e.bpm ?? "—"), row("duration asked", s.duration ?? "—"), row("preset", e.preset ?? "—"),
    row("rate", `${e.sample_rate} Hz (rendered from ${e.source_sample_rate ?? "?"} Hz)`)];
  if (s.length && s.length.reason) rows.push(row("length", s.length.reason));
  $("#settings").innerHTML = rows.join("");
}
function renderHistory() {
  const e = state.detail.take, edits = state.detail.timeline.edits, items = [];
  if (e.parent_take) items.push(`<li>made by <b>${esc((e.action || "").replace("_", " "))}</b> from
    <a href="#" data-take="${esc(e.parent_take)}">${esc(e.parent_take)}</a></li>`);
  const s = e.settings || {};
  if (s.duration != null || e.kind === "generate") {
    items.push(`<li>generated${s.duration ? ` (${s.duration} s asked)` : ""}${edits.length ? "" : `, seed ${esc(e.seed ?? "—")}`}</li>`);
  } else items.push(`<li>audio without a generation record (a recording, or a take rendered elsewhere)</li>`);
  for (const ed of edits) {
    if (ed.kind === "extend") items.push(`<li><b>extend</b>: spliced at ${fmt(ed.splice)} (crossfade ${(ed.crossfade || 0).toFixed(2)} s),
      +${(ed.added_seconds ?? ed.seconds ?? 0).toFixed(1)} s, seed ${esc(ed.seed ?? "—")}</li>`);
    else if (ed.kind === "infill") items.push(`<li><b>infill</b>: ${fmt(ed.start)}–${fmt(ed.end)} sung again, seed ${esc(ed.seed ?? "—")}</li>`);
    else if (ed.kind === "crop") items.push(`<li><b>crop</b> at ${fmt(ed.end)}</li>`);
    else items.push(`<li>${esc(ed.kind)}</li>`);
  }
  $("#history").innerHTML = items.join("");
  $("#history").querySelectorAll("a[data-take]").forEach((a) => a.addEventListener("click", (ev) => { ev.preventDefault(); selectTake(a.dataset.take); }));
}
function renderStems() {
  const e = state.detail.take;
  $("#stems").innerHTML = Object.keys(e.files || {}).map((s) => {
    const d = (e.stems || {})[s] || {};
    return `<li><button class="stem-play" data-stem="${esc(s)}">▶ ${esc(s)}</button>
      <span class="muted small">${esc(d.preset ?? "")} · ${d.loudness_lufs ?? "—"} LUFS · peak ${d.peak_dbfs ?? "—"} dBFS</span></li>`;
  }).join("");
  $("#stems").querySelectorAll(".stem-play").forEach((b) => b.addEventListener("click", async () => {
    $("#stem").value = b.dataset.stem; setSide("A"); await loadStem(b.dataset.stem); play();
  }));
}
function renderRatings() {
  const dims = state.project.dimensions, current = state.detail.ratings || {}, scores = (state.detail.scores || {}).scores || {};
  if (!dims.length) { $("#ratings").innerHTML = ""; $("#rating-note").textContent = "ratings are not available in this install"; return; }
  $("#ratings").innerHTML = `<tr><td></td><td class="muted small">your rating</td><td class="muted small">auto score</td></tr>` +
    dims.map((d) => {
      const v = d === "overall" ? overallOf(current) : current[d];
      const buttons = [1, 2, 3, 4, 5].map((n) => `<button data-dimension="${d}" data-stars="${n}" class="${v != null && n <= Math.round(v) ? "on" : ""}"
        title="${n} star${n > 1 ? "s" : ""}">★</button>`).join("");
      const score = d in scores ? (scores[d] == null ? "—" : Number(scores[d]).toFixed(2)) : "";
      return `<tr data-dimension="${d}"><td class="k">${d.replace("_", " ")}</td><td class="stars">${buttons}
        <span class="value small muted">${v == null ? "" : Number(v).toFixed(1)}</span></td><td class="score">${score}</td></tr>`;
    }).join("");
  const scored = state.detail.scores;
  $("#rating-note").textContent = scored ? `automatic scores of ${scored.time || "an earlier run"} (dr2studio eval)` : "no automatic scores yet (dr2studio eval)";
  $("#ratings").querySelectorAll("button[data-stars]").forEach((b) => b.addEventListener("click", () => rate(b.dataset.dimension, +b.dataset.stars)));
}
async function rate(dimension, starsGiven) {
  try {
    const res = await post(`/api/takes/${encodeURIComponent(state.take)}/ratings`, { stars: starsGiven, dimension });
    state.detail.ratings = res.current;
    (state.project.ratings[state.take] = res.current);
    renderRatings();
    const mini = document.querySelector(`#takes .take[data-take="${CSS.escape(state.take)}"] .stars-mini`);
    if (mini) mini.textContent = stars(overallOf(res.current));
    status(`rated ${state.take}: ${dimension} ${starsGiven}★`);
  } catch (err) { status(`rating failed: ${err.message}`); }
}

// ---------------------------------------------------------------- transport
function activePlayer() { return players[state.side]; }
function play() { activePlayer().play().catch((err) => status(`cannot play: ${err.message}`)); }
function seek(t) { activePlayer().currentTime = Math.max(0, t); }
function setLoop(a, b) { state.loop = a < b ? [a, b] : null; updateLoopText(); drawWave(); }
function updateLoopText() { $("#loop-range").textContent = state.loop ? `${fmt(state.loop[0])}–${fmt(state.loop[1])}` : "drag on the waveform to pick a region"; }
function setSide(side) {
  if (side === state.side) return;
  const from = activePlayer(), t = from.currentTime, playing = !from.paused;
  from.pause();
  state.side = side;
  const to = activePlayer();
  to.currentTime = Math.min(t, isFinite(to.duration) ? to.duration : t);
  if (playing) to.play().catch(() => {});
  $("#ab-side").textContent = side;
}
$("#play").addEventListener("click", () => { const p = activePlayer(); if (p.paused) play(); else p.pause(); });
$("#ab").addEventListener("click", () => {
  if (!state.compare) { status("pick a take B to compare with first"); return; }
  setSide(state.side === "A" ? "B" : "A");
});
$("#compare").addEventListener("change", (ev) => {
  state.compare = ev.target.value || null;
  if (state.compare) { const t = players.A.currentTime; players.B.src = audioUrl(state.compare, "mix"); players.B.currentTime = t; }
  else setSide("A");
});
$("#stem").addEventListener("change", (ev) => loadStem(ev.target.value));
$("#loop").addEventListener("change", () => { if ($("#loop").checked && !state.loop && state.wave) setLoop(0, state.wave.duration); });
for (const p of Object.values(players)) {
  p.addEventListener("play", () => { $("#play").textContent = "❚❚ Pause"; });
  p.addEventListener("pause", () => { $("#play").textContent = "▶ Play"; });
}
function tick() {
  const p = activePlayer();
  if (state.loop && $("#loop").checked && !p.paused && (p.currentTime >= state.loop[1] || p.currentTime < state.loop[0] - 0.05)) {
    p.currentTime = state.loop[0];
  }
  $("#clock").textContent = `${fmt(p.currentTime)} / ${fmt(p.duration)} ${state.side}`;
  if (state.wave && !p.paused) drawWave();
  requestAnimationFrame(tick);
}
requestAnimationFrame(tick);
const wave = $("#wave");
function waveTime(ev) { const r = wave.getBoundingClientRect(); return Math.max(0, Math.min(1, (ev.clientX - r.left) / r.width)) * (state.wave ? state.wave.duration : 0); }
wave.addEventListener("mousedown", (ev) => { state.drag = waveTime(ev); });
wave.addEventListener("mousemove", (ev) => { if (state.drag != null) { const t = waveTime(ev); setLoop(Math.min(state.drag, t), Math.max(state.drag, t)); } });
wave.addEventListener("mouseup", (ev) => {
  const t = waveTime(ev);
  if (state.drag != null && Math.abs(t - state.drag) < 0.05) { seek(t); drawWave(); }
  else if (state.drag != null) { $("#loop").checked = true; seek(Math.min(state.drag, t)); }
  state.drag = null;
});
document.addEventListener("keydown", (ev) => { if (ev.code === "Space" && ev.target === document.body) { ev.preventDefault(); $("#play").click(); } });
window.addEventListener("resize", () => { if (state.detail) { drawRuler(); drawWave(); if (state.spec) drawSpectrogram($("#spec"), state.spec); } });

// ---------------------------------------------------------------- actions and jobs
async function act(body) {
  $("#act-error").textContent = "";
  const style = $("#act-style").value.trim();
  if (style) body.style = style;
  try {
    const res = await post(`/api/takes/${encodeURIComponent(state.take)}/actions`, body);
    followJob(res.job);
  } catch (err) { $("#act-error").textContent = err.message; }
}
function lyricsField() { const v = $("#act-lyrics").value; return v.trim() ? v : undefined; }
$("#act-extend").addEventListener("click", () => act({ action: "extend", seconds: +$("#extend-seconds").value, lyrics: lyricsField() }));
$("#act-regenerate").addEventListener("click", () => {
  const lyrics = lyricsField();
  if ($("#regen-region").checked) {
    if (!state.loop) { $("#act-error").textContent = "drag a region on the waveform first"; return; }
    const section = state.detail.timeline.sections.find((s) => s.end > state.loop[0] && s.start < state.loop[1]);
    act({ action: "regenerate", start: +state.loop[0].toFixed(3), end: +state.loop[1].toFixed(3), lyrics: lyrics ?? (section ? section.text : "") });
  } else act({ action: "regenerate", section: +$("#regen-section").value, lyrics });
});
$("#act-seed").addEventListener("click", () => {
  const seed = $("#seed").value;
  act({ action: "new_seed", ...(seed !== "" ? { seed: +seed } : {}) });
});
function followJob(job) {
  let card = document.querySelector(`.job[data-job="${job.id}"]`);
  if (!card) {
    card = document.createElement("div");
    card.className = "job"; card.dataset.job = job.id;
    card.innerHTML = `<div class="row"><span><b>${esc(job.action.replace("_", " "))}</b> of ${esc(job.take)}</span>
      <span class="stage muted small"></span></div>
      <progress max="1" value="0"></progress>
      <canvas class="live" height="36"></canvas>
      <div class="row"><span class="result small"></span>
      <span><button class="listen" disabled>▶ so far</button> <button class="cancel">cancel</button></span></div>`;
    $("#jobs").prepend(card);
    card.querySelector(".cancel").addEventListener("click", () => post(`/api/jobs/${job.id}/cancel`, {}).catch((e) => status(e.message)));
    card.querySelector(".listen").addEventListener("click", () => {
      const p = $("#player-job"); activePlayer().pause(); p.src = `/api/jobs/${job.id}/audio.wav?t=${Date.now()}`; p.play().catch(() => {});
    });
  }
  const live = { mins: [], maxs: [], expected: job.expected_seconds || 1 };
  state.jobs.set(job.id, live);
  const update = (j) => {
    card.querySelector("progress").value = j.fraction;
    card.querySelector(".stage").textContent = `${j.state} · ${j.stage || ""} ${Math.round(j.fraction * 100)}%`;
    card.dataset.state = j.state;
  };
  update(job);
  if (job.state === "done" || job.state === "failed" || job.state === "cancelled") { finishJob(card, job); return; }
  const source = new EventSource(`/api/jobs/${job.id}/events`);
  source.addEventListener("job", (ev) => update(JSON.parse(ev.data)));
  source.addEventListener("progress", (ev) => {
    const e = JSON.parse(ev.data);
    update({ fraction: e.fraction, stage: e.stage, state: "running" });
  });
  source.addEventListener("audio", (ev) => {
    const e = JSON.parse(ev.data), perSecond = e.peaks.length / Math.max(e.seconds, 1e-6);
    const first = Math.round(e.start * perSecond);
    e.peaks.forEach(([lo, hi], i) => { live.mins[first + i] = lo; live.maxs[first + i] = hi; });
    const total = Math.max(live.mins.length, Math.round(live.expected * perSecond));
    const mins = Array.from({ length: total }, (_, i) => live.mins[i] ?? 0), maxs = Array.from({ length: total }, (_, i) => live.maxs[i] ?? 0);
    drawPeaks(card.querySelector("canvas.live"), mins, maxs, "#ffb35f");
    card.querySelector(".listen").disabled = false;
    card.querySelector(".result").textContent = `${e.streamed.toFixed(1)} s sampled`;
  });
  const end = async (ev) => {
    source.close();
    const j = (await api(`/api/jobs/${job.id}`)).job;
    update(j); finishJob(card, j);
  };
  source.addEventListener("done", end);
  source.addEventListener("error", (ev) => { if (ev.data) end(ev); else if (source.readyState === EventSource.CLOSED) end(ev); });
  source.addEventListener("cancelled", end);
}
async function finishJob(card, job) {
  card.classList.add(job.state);
  card.querySelector(".cancel").disabled = true;
  const result = card.querySelector(".result");
  if (job.state === "done" && job.new_take) {
    result.innerHTML = `new take <a href="#" class="new-take">${esc(job.new_take)}</a>`;
    result.querySelector("a").addEventListener("click", (ev) => { ev.preventDefault(); selectTake(job.new_take); });
    if (!state.newTakes.has(job.new_take)) { state.newTakes.add(job.new_take); await loadProject(state.take); }
    status(`new take ${job.new_take}`);
  } else if (job.state !== "done") {
    result.innerHTML = `<span class="error">${esc(job.error || job.state)}</span>`;
  }
}

// ---------------------------------------------------------------- start
(async () => {
  try {
    await loadProject();
    const jobs = (await api("/api/jobs")).jobs;
    jobs.slice(-8).forEach(followJob);
    document.body.dataset.ready = "1";
  } catch (err) { status(err.message); document.body.dataset.ready = "error"; }
})();
