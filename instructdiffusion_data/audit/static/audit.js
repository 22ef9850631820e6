// idd audit page: plain JS, no build step. Every value from the server is put in the page as text
// (textContent / attributes through el()), never as HTML.
"use strict";

const state = { page: 0, total: 0, pageSize: 48, alignPage: 0, token: "", writable: false, scoreNames: [],
                current: null, group: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;  // CSSOM: allowed by the page's CSP (no inline style)
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const $ = (sel) => document.querySelector(sel);
function toast(msg, isError) {
  const t = $("#toast"); t.textContent = msg; t.hidden = false; t.className = isError ? "error" : "";
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

async function api(path, params, opts) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (Array.isArray(v)) v.forEach((x) => url.searchParams.append(k, x));
    else if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  }
  const res = await fetch(url, opts);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(typeof body.detail === "string" ? body.detail : `${res.status} ${res.statusText}`);
  return body;
}
async function post(path, body) {
  return api(path, {}, { method: "POST", headers: { "Content-Type": "application/json", "X-Audit-Token": state.token },
                          body: JSON.stringify(body) });
}
function imgUrl(r, kind, thumb, style) {
  const p = new URLSearchParams({ output: r.output, split: r.split, key: r.key, kind });
  if (thumb) p.set("thumb", "1");
  if (style) p.set("style", style);
  return `/api/image?${p}`;
}

// ---------------------------------------------------------------------------- filters
function filterValues() {
  const f = new FormData($("#filters"));
  const v = {};
  for (const k of ["output", "split", "task", "dataset", "reason", "label", "q", "sort", "order"]) v[k] = f.get(k) || "";
  v.score = [...document.querySelectorAll("#ranges .range")].map((r) => {
    const name = r.querySelector("select").value, [lo, hi] = [...r.querySelectorAll("input")].map((i) => i.value);
    return name && (lo !== "" || hi !== "") ? `${name}:${lo}:${hi}` : null;
  }).filter(Boolean);
  state.pageSize = Number(f.get("page_size")) || 48;
  return v;
}
function setOptions(select, values, keep) {
  const cur = keep ?? select.value;
  select.replaceChildren(el("option", { value: "" }, "all"), ...values.map((v) => el("option", { value: v }, v)));
  if ([...select.options].some((o) => o.value === cur)) select.value = cur;
}
function addRange(name, lo, hi) {
  const sel = el("select", {}, el("option", { value: "" }, "score"), ...state.scoreNames.map((n) => el("option", { value: n }, n)));
  if (name) sel.value = name;
  const row = el("div", { class: "range" }, sel,
    el("input", { type: "number", step: "any", placeholder: "min", value: lo ?? "" }),
    el("input", { type: "number", step: "any", placeholder: "max", value: hi ?? "" }),
    el("button", { type: "button", onclick: () => row.remove() }, "x"));
  $("#ranges").append(row);
}

async function loadFacets() {
  const v = filterValues();
  const c = await api("/api/counts", { output: v.output, split: v.split });
  const f = $("#filters");
  setOptions(f.task, Object.keys(c.tasks));
  setOptions(f.dataset, Object.keys(c.datasets));
  setOptions(f.reason, Object.keys(c.reasons));
  state.scoreNames = c.score_names;
  const sort = f.sort, cur = sort.value;
  sort.replaceChildren(...["key", "task", "dataset", "reason"].map((s) => el("option", { value: s }, s)),
    ...c.score_names.map((n) => el("option", { value: `score:${n}` }, `score: ${n}`)));
  if ([...sort.options].some((o) => o.value === cur)) sort.value = cur;
  for (const s of document.querySelectorAll("#ranges select")) {
    const was = s.value;
    s.replaceChildren(el("option", { value: "" }, "score"), ...c.score_names.map((n) => el("option", { value: n }, n)));
    s.value = was;
  }
  return c;
}

// ---------------------------------------------------------------------------- outputs
async function loadOutputs() {
  const outs = await api("/api/outputs");
  const sel = $("#filters").output;
  setOptions(sel, outs.map((o) => o.output));
  $("#outputs").replaceChildren(...outs.map((o) => el("li", {},
    el("div", { class: "name" }, o.output),
    el("a", { "data-output": o.output, "data-split": "train", onclick: () => pickOutput(o.output, "train") },
      `kept ${o.splits.train.rows}`),
    el("a", { "data-output": o.output, "data-split": "rejected", onclick: () => pickOutput(o.output, "rejected") },
      `rejected ${o.splits.rejected.rows}`),
    o.errors.map((e) => el("div", { class: "error" }, e)))));
}
async function pickOutput(output, split) {
  const f = $("#filters");
  f.output.value = output; f.split.value = split; f.reason.value = ""; f.task.value = ""; f.dataset.value = "";
  await loadFacets();
  state.page = 0;
  refresh();
}

// ---------------------------------------------------------------------------- grid
function badge(text, cls) { return el("span", { class: `badge ${cls || ""}` }, text); }
function fmt(x) { return typeof x === "number" ? (Math.abs(x) >= 100 ? x.toFixed(0) : x.toPrecision(3)) : String(x); }

function thumb(r, kind) {
  const box = el("div", { class: "thumb" });
  if (r[`has_${kind}`] === false) { box.append(el("span", { class: "key" }, `no ${kind}`)); return box; }
  const img = el("img", { src: imgUrl(r, kind, true), loading: "lazy", alt: `${kind} ${r.key}` });
  img.addEventListener("error", () => { img.replaceWith(el("span", { class: "key" }, `no ${kind}`)); });
  box.append(img);
  if (kind === "tgt" && r.has_mask && $("#overlay").checked) {
    box.append(el("img", { class: "mask", src: imgUrl(r, "mask", true, "overlay"), alt: "mask" }));
  }
  return box;
}
function card(r) {
  return el("div", { class: `card ${r.keep ? "" : "dropped"}`, "data-key": r.key, onclick: () => openSample(r) },
    el("div", { class: "pairimg" }, thumb(r, "src"), el("span", { class: "arrow" }, "\u2192"), thumb(r, "tgt")),
    el("div", { class: "instr" }, r.instruction || "(no instruction)"),
    el("div", {}, badge(r.task || "?", "task"), badge(r.dataset || "?"),
      r.keep ? badge("kept", "kept") : r.reason.split(";").map((x) => badge(x, "reason")),
      r.label ? badge(r.label, r.label) : null),
    el("div", { class: "scores" }, Object.entries(r.scores).map(([k, v]) => `${k} ${fmt(v)}`).join("  ")),
    el("div", { class: "key" }, `${r.output} / ${r.split} / ${r.key}`));
}
async function loadGrid() {
  const v = filterValues();
  const seq = (state.gridSeq = (state.gridSeq || 0) + 1);
  const res = await api("/api/samples", { ...v, page: state.page, page_size: state.pageSize });
  if (seq !== state.gridSeq) return;  // a newer request was sent meanwhile: its answer wins
  state.total = res.total;
  const pages = Math.max(1, Math.ceil(res.total / state.pageSize));
  for (const p of document.querySelectorAll("#tab-samples .pageinfo")) p.textContent = `page ${state.page + 1} of ${pages} (${res.total} samples)`;
  state.rows = res.rows;
  $("#grid").replaceChildren(...(res.rows.length ? res.rows.map(card) : [el("p", {}, "No samples match.")]));
}

// ---------------------------------------------------------------------------- counts & histograms
function countTable(title, obj) {
  const max = Math.max(1, ...Object.values(obj));
  return el("div", {}, el("h3", {}, title), el("table", {}, Object.entries(obj).map(([k, n]) =>
    el("tr", {}, el("td", {}, k || "(none)"), el("td", { class: "n" }, n),
      el("td", {}, el("span", { class: "bar", style: `width:${Math.round(120 * n / max)}px` }))))));
}
function histogram(h) {
  const W = 300, H = 110, pad = 18, n = h.bins, bw = (W - 2 * pad) / n;
  const max = Math.max(1, ...h.kept.map((k, i) => k + h.dropped[i]));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H + 24);
  const add = (tag, a, text) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(a)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; svg.append(e); return e; };
  for (let i = 0; i < n; i++) {
    const kh = H * h.kept[i] / max, dh = H * h.dropped[i] / max, x = pad + i * bw;
    add("rect", { x, y: H - kh, width: bw - 1, height: kh, fill: "#1856c4" });
    add("rect", { x, y: H - kh - dh, width: bw - 1, height: dh, fill: "#e07b00" });
  }
  const span = (h.max - h.min) || 1;
  const lo = Math.min(h.min, ...h.thresholds.map((t) => t.value)), hi = Math.max(h.max, ...h.thresholds.map((t) => t.value));
  for (const t of h.thresholds) {
    const x = pad + (W - 2 * pad) * (t.value - h.min) / span;
    const xc = Math.max(1, Math.min(W - 1, x));
    const line = add("line", { x1: xc, x2: xc, y1: 0, y2: H, stroke: "#d00", "stroke-width": 2, "stroke-dasharray": x === xc ? "" : "3,2", class: "threshold" });
    add("title", {}, `${t.label} = ${t.value}`);
    line.dataset.value = t.value;
  }
  add("text", { x: pad, y: H + 14, "font-size": 10 }, fmt(h.min));
  add("text", { x: W - pad, y: H + 14, "font-size": 10, "text-anchor": "end" }, fmt(h.max));
  void lo; void hi;
  return el("div", { class: "hist", "data-score": h.score, "data-dataset": h.dataset || "" },
    el("h3", {}, `${h.dataset || "?"} \u00b7 ${h.score}`), svg,
    el("div", { class: "scores" }, `${h.n} rows` + (h.thresholds.length ? "; thresholds: " + h.thresholds.map((t) => `${fmt(t.value)} (${t.label})`).join(", ") : "; no threshold recorded")));
}
async function loadStats() {
  const v = filterValues();
  const seq = (state.statsSeq = (state.statsSeq || 0) + 1);
  const [c, hs] = await Promise.all([api("/api/counts", v), api("/api/histograms", { output: v.output, split: v.split })]);
  if (seq !== state.statsSeq) return;
  $("#counts").replaceChildren(el("div", { class: "counts" }, countTable("split", c.splits), countTable("task", c.tasks),
    countTable("dataset", c.datasets), countTable("drop reason", c.reasons)));
  $("#histograms").replaceChildren(...(hs.length ? hs.map(histogram) : [el("p", {}, "No scores in meta[\"scores\"] for these samples.")]));
}

// ---------------------------------------------------------------------------- sample view
function metaRows(obj, prefix) {
  const rows = [];
  for (const [k, v] of Object.entries(obj || {})) {
    const path = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) rows.push(...metaRows(v, path));
    else rows.push(el("tr", {}, el("td", {}, path), el("td", {}, typeof v === "string" ? v : JSON.stringify(v))));
  }
  return rows;
}
function neighbour(r) {
  return el("div", { class: "neighbour", "data-key": r.key, onclick: () => openSample(r) },
    el("img", { src: imgUrl(r, "tgt", true), alt: r.key }), el("div", {}, badge(r.task || "?", "task"),
      r.guidance_scale != null ? badge(`guidance ${r.guidance_scale}`) : null), el("div", {}, r.instruction || ""));
}
async function openSample(r) {
  const d = await api("/api/sample", { output: r.output, split: r.split, key: r.key });
  state.current = d.row;
  const row = d.row;
  const figs = [];
  if (row.has_src) figs.push(el("figure", {}, el("img", { src: imgUrl(row, "src"), alt: "source", id: "full-src" }), el("figcaption", {}, "source")));
  if (row.has_tgt) figs.push(el("figure", {}, el("img", { src: imgUrl(row, "tgt"), alt: "target", id: "full-tgt" }), el("figcaption", {}, "target")));
  if (!row.has_src && !row.has_tgt) figs.push(el("p", { class: "key" }, "no images: the row was dropped before any were made"));
  if (row.has_mask) figs.push(el("figure", {}, el("img", { src: imgUrl(row, "mask"), alt: "mask", id: "full-mask" }), el("figcaption", {}, "mask")));
  if (d.reference) {
    const p = new URLSearchParams({ output: row.output, split: row.split, key: row.key });
    const img = el("img", { src: `/api/reference?${p}`, alt: "reference patch", id: "full-ref" });
    const fig = el("figure", {}, img, el("figcaption", {}, "reference patch"));
    img.addEventListener("error", () => img.replaceWith(el("p", { class: "key" }, "reference image not reachable under the root")));
    figs.push(fig);
  }
  for (const f of figs) {
    const img = f.querySelector("img");
    if (!img) continue;
    if (img.id !== "full-ref") img.addEventListener("error", () => img.replaceWith(el("p", { class: "key" }, "image missing")));
  }
  const history = el("ul", { id: "label-history" }, d.labels.map((l) =>
    el("li", {}, badge(l.verdict, l.verdict), ` ${l.auditor} ${l.ts}`, l.comment ? ` \u2014 ${l.comment}` : "")));
  const comment = el("textarea", { id: "label-comment", placeholder: "comment (optional)", maxlength: 2000 });
  const send = async (verdict) => {
    try {
      await post("/api/labels", { output: row.output, split: row.split, key: row.key, verdict, comment: comment.value,
                                  auditor: $("#auditor").value });
      toast(`labelled ${verdict}`);
      await openSample(row);
      loadGrid();
    } catch (e) { toast(e.message, true); }
  };
  const form = el("div", { class: "labelform" }, el("h3", {}, "Label"), comment,
    el("button", { id: "accept", onclick: () => send("accept"), disabled: !state.writable }, "Accept"),
    el("button", { id: "reject", onclick: () => send("reject"), disabled: !state.writable }, "Reject"),
    state.writable ? null : el("span", { class: "key" }, " unlock with the token to label"), history);
  const sections = [
    el("h2", {}, row.instruction || "(no instruction)"),
    el("div", {}, badge(row.task || "?", "task"), badge(row.dataset || "?"), row.keep ? badge("kept", "kept") :
      (row.drop_reason || "").split(";").map((x) => badge(x, "reason"))),
    el("div", { class: "key" }, `${row.output} / ${row.split} / ${row.shard} / ${row.key}`),
    el("div", { class: "full" }, figs),
    el("div", { class: "cols" },
      el("div", {}, (d.drops || []).length ? el("div", {}, el("h3", {}, "drop details"),
          el("table", { class: "meta", id: "drops" }, d.drops.flatMap((x, i) => metaRows(x, `drop[${i}]`)))) : null,
        el("h3", {}, "meta"), el("table", { class: "meta", id: "meta" }, metaRows(d.meta))),
      el("div", {}, form,
        d.pair.length ? el("div", {}, el("h3", {}, "pair"), el("div", { class: "neighbours", id: "pair" }, d.pair.map(neighbour))) : null,
        d.group.length > 1 ? el("div", {}, el("h3", {}, "alignment group"), el("div", { class: "neighbours" }, d.group.map(neighbour)),
          el("button", { onclick: () => { closeSample(); showTab("align"); openGroup(row.output, row.group_id); } }, "review this group")) : null,
        d.reference ? el("div", {}, el("h3", {}, "reference"), el("table", { class: "meta" }, metaRows(d.reference.fields))) : null)),
  ];
  $("#sample-body").replaceChildren(...sections);
  $("#sample").hidden = false;
}
function closeSample() { $("#sample").hidden = true; state.current = null; }

// ---------------------------------------------------------------------------- alignment
async function loadGroups() {
  const output = filterValues().output;
  const seq = (state.groupSeq = (state.groupSeq || 0) + 1);
  const res = await api("/api/align/groups", { output, page: state.alignPage, page_size: 24 });
  if (seq !== state.groupSeq) return;
  const pages = Math.max(1, Math.ceil(res.total / 24));
  for (const p of document.querySelectorAll("#tab-align .pageinfo")) p.textContent = `page ${state.alignPage + 1} of ${pages} (${res.total} groups)`;
  $("#groups").replaceChildren(...(res.rows.length ? res.rows.map((g) => el("div", { class: "groupcard", "data-group": g.group_id,
    onclick: () => openGroup(g.output, g.group_id) }, badge(`${g.candidates} candidates`), badge(g.dataset || "?"), ` ${g.instruction || ""} `,
    el("span", { class: "key" }, `${g.output} / ${g.group_id}`))) : [el("p", {}, "No groups with several candidates.")]));
}
async function openGroup(output, group) {
  const d = await api("/api/align/group", { output, group });
  state.group = { output, group, picked: new Set() };
  const last = d.labels.find((l) => l.verdict === "align_pick");
  if (last) d.labels.filter((l) => l.ts === last.ts && l.auditor === last.auditor && l.key).forEach((l) => state.group.picked.add(l.key));
  const cands = d.candidates.map((r) => {
    const box = el("div", { class: `candidate ${state.group.picked.has(r.key) ? "picked" : ""}`, "data-key": r.key },
      el("img", { src: imgUrl(r, "tgt", true), alt: r.key }),
      el("div", {}, r.guidance_scale != null ? badge(`guidance ${r.guidance_scale}`) : null,
        r.image_guidance_scale != null ? badge(`image guidance ${r.image_guidance_scale}`) : null, r.keep ? badge("kept", "kept") : badge(r.reason, "reason")),
      el("div", { class: "key" }, r.key));
    box.addEventListener("click", () => {
      const s = state.group.picked;
      if (s.has(r.key)) s.delete(r.key); else if (s.size < 2) s.add(r.key); else { toast("pick at most 2", true); return; }
      box.classList.toggle("picked", s.has(r.key));
    });
    return box;
  });
  const first = d.candidates[0];
  $("#group").replaceChildren(el("h3", {}, first.instruction || ""),
    el("div", { class: "full" }, el("figure", { class: "small" }, el("img", { src: imgUrl(first, "src", true), alt: "source" }), el("figcaption", {}, "source"))),
    el("p", {}, "Click the best 0-2 targets, then save."),
    el("div", { class: "candidates" }, cands),
    el("button", { id: "save-picks", disabled: !state.writable, onclick: savePicks }, "Save picks"),
    el("ul", {}, d.labels.filter((l) => l.verdict === "align_pick").slice(0, 10).map((l) =>
      el("li", {}, `${l.auditor} ${l.ts}: ${l.key || "(none)"}`))));
}
async function savePicks() {
  const g = state.group;
  try {
    await post("/api/align/pick", { output: g.output, group: g.group, keys: [...g.picked], auditor: $("#auditor").value });
    toast(`saved ${g.picked.size} pick(s)`);
    openGroup(g.output, g.group);
  } catch (e) { toast(e.message, true); }
}
async function exportAlignment() {
  const output = filterValues().output || (state.group && state.group.output);
  if (!output) { toast("choose an output first", true); return; }
  try {
    const r = await post("/api/align/export", { output });
    $("#export-result").textContent = `exported ${r.splits.train} picks to ${r.out}`;
  } catch (e) { $("#export-result").textContent = e.message; toast(e.message, true); }
}

// Keys in the sample view: Escape closes, left/right arrows step through the grid page, a / r accept / reject.
function onKey(e) {
  if (e.target.closest && e.target.closest("input, textarea, select")) return;
  if (e.key === "Escape") { closeSample(); return; }
  const cur = state.current;
  if (!cur || $("#sample").hidden) return;
  if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
    const rows = state.rows || [];
    const i = rows.findIndex((r) => r.key === cur.key && r.output === cur.output && r.split === cur.split);
    const next = rows[i + (e.key === "ArrowRight" ? 1 : -1)];
    if (i >= 0 && next) openSample(next);
  } else if ((e.key === "a" || e.key === "r") && state.writable) {
    $(e.key === "a" ? "#accept" : "#reject").click();
  }
}

// ---------------------------------------------------------------------------- wiring
function showTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of ["samples", "stats", "align"]) $(`#tab-${s}`).hidden = s !== name;
  state.tab = name;
  refresh();
}
function refresh() {
  const run = state.tab === "stats" ? loadStats : state.tab === "align" ? loadGroups : loadGrid;
  return run().catch((e) => toast(e.message, true));
}
async function unlock() {
  state.token = $("#token").value;
  try {
    await post("/api/auth", {});
    if (!$("#auditor").value.trim()) { toast("enter your auditor name", true); }
    state.writable = true;
    sessionStorage.setItem("idd-audit-token", state.token);
    localStorage.setItem("idd-audit-auditor", $("#auditor").value);
    $("#mode").textContent = "labelling"; $("#mode").classList.add("on");
    toast("labelling unlocked");
    if (state.current) openSample(state.current);
    if (state.group) openGroup(state.group.output, state.group.group);
  } catch (e) { state.writable = false; toast(e.message, true); }
}

async function init() {
  state.tab = "samples";
  $("#auditor").value = localStorage.getItem("idd-audit-auditor") || "";
  $("#token").value = sessionStorage.getItem("idd-audit-token") || "";
  $("#unlock").addEventListener("click", unlock);
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); state.page = 0; refresh(); });
  $("#filters").output.addEventListener("change", () => loadFacets().then(() => { state.page = 0; refresh(); }));
  $("#filters").split.addEventListener("change", () => loadFacets().then(() => { state.page = 0; refresh(); }));
  for (const name of ["task", "dataset", "reason", "label", "sort", "order", "page_size"]) {
    $("#filters")[name].addEventListener("change", () => { state.page = 0; refresh(); });
  }
  $("#overlay").addEventListener("change", () => loadGrid());
  $("#reset").addEventListener("click", () => { $("#filters").reset(); $("#ranges").replaceChildren(); loadFacets().then(refresh); });
  $("#add-range").addEventListener("click", () => addRange());
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  for (const b of document.querySelectorAll("#tab-samples .prev")) b.addEventListener("click", () => { if (state.page > 0) { state.page--; loadGrid(); } });
  for (const b of document.querySelectorAll("#tab-samples .next")) b.addEventListener("click", () => { if ((state.page + 1) * state.pageSize < state.total) { state.page++; loadGrid(); } });
  for (const b of document.querySelectorAll("#tab-align .prev")) b.addEventListener("click", () => { if (state.alignPage > 0) { state.alignPage--; loadGroups(); } });
  for (const b of document.querySelectorAll("#tab-align .next")) b.addEventListener("click", () => { state.alignPage++; loadGroups(); });
  $("#export").addEventListener("click", exportAlignment);
  $("#close").addEventListener("click", closeSample);
  $("#sample").addEventListener("click", (e) => { if (e.target.id === "sample") closeSample(); });
  document.addEventListener("keydown", onKey);
  const info = await api("/api/info");
  if (!info.writable) { $("#unlock").disabled = true; $("#token").disabled = true; $("#mode").textContent = "read-only (no token configured)"; }
  else if ($("#token").value) await unlock();
  await loadOutputs();
  await loadFacets();
  await refresh();
  document.body.dataset.ready = "1";
}
init().catch((e) => toast(e.message, true));
