// llm4rerank trace viewer: vanilla JS, no dependencies, nothing fetched but this server's JSON API.
// Stored text (goals, LLM answers) is untrusted: it only ever reaches the page via textContent.
"use strict";

const TOKEN_KEY = "llm4rerank.audit.token";
const SVG_NS = "http://www.w3.org/2000/svg";
// Node names, short labels and colours come from the server's node registry (/api/nodes).
let NODE_COLORS = {};
let SHORT = {};

const $ = (id) => document.getElementById(id);
let nextCursor = null;
let lastQuery = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class Unauthorized extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  if (response.status === 401) throw new Unauthorized("the token was refused");
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
  return body;
}

function showLogin(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("app").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  $("login-message").textContent = message || "";
  $("token").focus();
}

async function start() {
  if (!token()) { showLogin(""); return; }
  $("login").hidden = true;
  $("app").hidden = false;
  $("forget").hidden = false;
  const wanted = new URLSearchParams(location.hash.slice(1)).get("session");
  try { await loadNodes(); } catch (error) { handle(error, $("search-message")); return; }
  await search(false);
  if (wanted) await openSession(wanted);
}

async function loadNodes() {
  const { nodes } = await api("/api/nodes");
  NODE_COLORS = Object.fromEntries(nodes.map((n) => [n.name, n.colour]));
  SHORT = Object.fromEntries(nodes.map((n) => [n.name, n.short]));
  const select = $("node-select");
  select.replaceChildren(el("option", { value: "", text: "any" }),
                         ...nodes.map((n) => el("option", { value: n.name, text: n.name })));
}

function handle(error, where) {
  if (error instanceof Unauthorized) showLogin("That token was refused; enter a valid one.");
  else where.textContent = `Error: ${error.message}`;
}

// search -----------------------------------------------------------------------------------------
function queryFromForm() {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData($("search")).entries()) {
    const v = String(value).trim();
    if (v) params.append(key, v);
  }
  params.set("limit", "50");
  return params;
}

async function search(append) {
  $("search-message").textContent = "";
  const params = append ? new URLSearchParams(lastQuery) : queryFromForm();
  if (append && nextCursor) params.set("cursor", nextCursor);
  if (!append) lastQuery = params.toString();
  try {
    const page = await api(`/api/sessions?${params}`);
    const body = $("results").tBodies[0];
    if (!append) body.replaceChildren();
    for (const row of page.items) body.append(resultRow(row));
    if (!append && page.items.length === 0) $("search-message").textContent = "No sessions match.";
    nextCursor = page.next_cursor;
    $("more").hidden = !nextCursor;
  } catch (error) { handle(error, $("search-message")); }
}

function resultRow(s) {
  const open = el("button", { type: "button", class: "link", text: s.request_id,
                              "data-request-id": s.request_id,
                              onclick: () => openSession(s.request_id) });
  const path = (s.path || []).map((n) => SHORT[n] || "?").join("") || "-";
  return el("tr", {},
    el("td", { text: (s.received_at || "").replace("T", " ").slice(0, 19) }), el("td", {}, open),
    el("td", { text: s.user_id }), el("td", { class: `status-${s.status}`, text: s.status }),
    el("td", { class: "mono", text: path }), el("td", { text: String(s.llm_calls ?? 0) }),
    el("td", { text: String((s.prompt_tokens || 0) + (s.completion_tokens || 0)) }),
    el("td", { text: String(s.latency_ms ?? "-") }), el("td", { text: s.model || "-" }));
}

// one session ------------------------------------------------------------------------------------
async function openSession(requestId) {
  try {
    const s = await api(`/api/session?request_id=${encodeURIComponent(requestId)}`);
    history.replaceState(null, "", `#session=${encodeURIComponent(requestId)}`);
    renderSession(s);
  } catch (error) { handle(error, $("search-message")); }
}

function renderSession(s) {
  $("session").hidden = false;
  $("session").dataset.requestId = s.request_id;
  $("session-title").textContent = `Session ${s.request_id}`;
  const facts = [
    ["status", s.status], ["goal", s.goal], ["user", s.user_id], ["model", s.model || "-"],
    ["prompts", s.prompt_version || "-"], ["policy", s.policy || "-"],
    ["received", s.received_at || "-"], ["completed", s.completed_at || "-"],
    ["LLM calls", String(s.llm_calls ?? 0)],
    ["tokens", `${s.prompt_tokens || 0} prompt + ${s.completion_tokens || 0} completion`],
    ["latency", `${s.latency_ms ?? "-"} ms`],
  ];
  if (s.reason) facts.push(["reason", s.reason]);
  if (s.replay_of) facts.push(["replay of", `${s.replay_of} (${s.replay_mode || "?"})`]);
  $("session-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  $("path-box").replaceChildren(drawPath(s.path || s.steps.map((st) => st.node)));
  $("chart-box").replaceChildren(drawChart(s));
  $("steps").replaceChildren(...s.steps.map((st) => stepCard(s, st)));
  $("session").scrollIntoView();
}

function drawPath(path) {
  const w = 112, h = 44, gap = 28;
  const width = Math.max(1, path.length) * (w + gap);
  const root = svg("svg", { id: "path", width, height: h + 8, viewBox: `0 0 ${width} ${h + 8}`,
                            "data-path": path.join(","), role: "img", "aria-label": `path ${path.join(" to ")}` });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
                                 markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7280" }));
  defs.append(marker);
  root.append(defs);
  path.forEach((node, i) => {
    const x = i * (w + gap) + 4;
    const g = svg("g", { class: "path-node", "data-node": node, "data-index": i });
    g.append(svg("rect", { x, y: 4, width: w, height: h, rx: 10, fill: NODE_COLORS[node] || "#374151" }));
    const label = svg("text", { x: x + w / 2, y: 4 + h / 2 + 5, "text-anchor": "middle", fill: "#ffffff",
                                "font-size": 14 });
    label.textContent = `${i + 1}. ${node}`;
    g.append(label);
    root.append(g);
    if (i < path.length - 1) {
      root.append(svg("line", { x1: x + w, y1: 4 + h / 2, x2: x + w + gap - 2, y2: 4 + h / 2,
                                stroke: "#6b7280", "stroke-width": 2, "marker-end": "url(#arrow)" }));
    }
  });
  return root;
}

function itemColor(index, n) {
  return `hsl(${Math.round((index * 360) / Math.max(n, 1) * 7 % 360)}, 65%, 42%)`;
}

function drawChart(s) {
  // Columns: the upstream order, then the current list after every step (Backward restores one).
  const columns = [{ label: "upstream", node: "upstream", list: s.upstream }];
  for (const st of s.steps) columns.push({ label: `${st.step} ${st.node}`, node: st.node, list: st.after });
  const items = s.upstream;
  const n = items.length;
  const left = 150, right = 150, top = 44, row = 22, colW = 120;
  const width = left + right + (columns.length - 1) * colW;
  const height = top + n * row + 16;
  const x = (c) => left + c * colW;
  const y = (r) => top + r * row;
  const root = svg("svg", { id: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": "rank of every item after each step",
                            "data-columns": columns.map((c) => c.node).join(",") });
  columns.forEach((c, i) => {
    root.append(svg("line", { x1: x(i), y1: top - 10, x2: x(i), y2: y(n - 1) + 10, stroke: "#d1d5db",
                              "stroke-dasharray": c.node === "backward" ? "4 4" : "none" }));
    const label = svg("text", { x: x(i), y: 18, "text-anchor": "middle", "font-size": 12,
                                fill: NODE_COLORS[c.node] || "#374151", class: "column-label" });
    label.textContent = c.label;
    root.append(label);
  });
  for (let r = 0; r < n; r++) {
    const t = svg("text", { x: 8, y: y(r) + 4, "font-size": 11, fill: "#9ca3af" });
    t.textContent = String(r + 1);
    root.append(t);
  }
  const ranks = columns.map((c) => new Map(c.list.map((item, r) => [item, r])));
  const lines = svg("g", { id: "lines" });
  items.forEach((item, index) => {
    const color = itemColor(index, n);
    const series = ranks.map((m) => m.get(item));
    const g = svg("g", { class: "item-line", "data-item": item,
                         "data-ranks": series.map((r) => (r === undefined ? "" : r + 1)).join(",") });
    const points = series.map((r, c) => (r === undefined ? null : `${x(c)},${y(r)}`)).filter(Boolean);
    g.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2.5,
                               "stroke-linejoin": "round" }));
    series.forEach((r, c) => {
      if (r === undefined) return;
      const dot = svg("circle", { cx: x(c), cy: y(r), r: 4, fill: color });
      const tip = svg("title");
      tip.textContent = `${item}: rank ${r + 1} ${c === 0 ? "upstream" : `after step ${columns[c].label}`}`;
      dot.append(tip);
      g.append(dot);
    });
    const start = svg("text", { x: left - 14, y: y(series[0]) + 4, "text-anchor": "end", "font-size": 12, fill: color });
    start.textContent = item;
    const last = series[series.length - 1];
    const end = svg("text", { x: x(columns.length - 1) + 14, y: y(last) + 4, "font-size": 12, fill: color });
    end.textContent = `${last + 1}. ${item}`;
    g.append(start, end);
    g.addEventListener("mouseenter", () => { root.classList.add("focus"); g.classList.add("active"); });
    g.addEventListener("mouseleave", () => { root.classList.remove("focus"); g.classList.remove("active"); });
    lines.append(g);
  });
  root.append(lines);
  return root;
}

function stepCard(s, st) {
  const head = el("h4", { text: `Step ${st.step}: ${st.node}` });
  head.style.color = NODE_COLORS[st.node] || "#111827";
  const facts = el("p", { class: "muted", text:
    `policy ${st.policy} · offered ${(st.offered || []).join(", ") || "-"} · pool ${st.pool_size}` +
    (st.node === "stop" ? "" : ` · next ${st.next_node || "-"} · calls ${st.call_count} · retries ` +
      `${st.retries || 0} · tokens ${st.prompt_tokens || 0}+${st.completion_tokens || 0} · ` +
      `${Number(st.latency_ms || 0).toFixed(1)} ms`) });
  const card = el("article", { class: "step", "data-step": st.step, "data-node": st.node }, head, facts);
  if (st.node === "backward") {
    card.append(el("p", { text: `removed: ${(st.removed || []).join(" ") || "(nothing)"}` }));
  } else if (st.ranking) {
    // Stop repeats the final list: show how it moved against the upstream order, as `trace show` does.
    const base = st.node === "stop" ? s.upstream : st.before;
    card.append(el("p", { class: "muted", text: st.node === "stop" ? "final list, moves against the upstream order"
                                                                  : "moves against the list the step started from" }));
    const before = new Map(base.map((item, r) => [item, r]));
    const list = el("ol", { class: "ranking" });
    st.ranking.forEach((item, r) => {
      const d = before.has(item) ? before.get(item) - r : null;
      const move = d === null ? "new" : d === 0 ? "=" : d > 0 ? `▲${d}` : `▼${-d}`;
      list.append(el("li", {}, el("span", { class: "mono", text: item }), " ",
                     el("span", { class: d > 0 ? "up" : d < 0 ? "down" : "same", text: move })));
    });
    card.append(list);
  } else {
    card.append(el("p", { text: "no usable list" }));
  }
  for (const note of st.notes || []) card.append(el("p", { class: "note", text: `repair: ${note}` }));
  if (st.problem) card.append(el("p", { class: "error", text: `problem: ${st.problem}` }));
  if (st.call_count > 0) {
    const box = el("div", { class: "calls" });
    const button = el("button", { type: "button", class: "show-calls", text: "Show prompt and answer" });
    button.addEventListener("click", async () => {
      if (box.childElementCount) {
        box.replaceChildren();
        card.classList.remove("wide");
        button.textContent = "Show prompt and answer";
        return;
      }
      try {
        const data = await api(`/api/session?request_id=${encodeURIComponent(s.request_id)}&step=${st.step}`);
        box.replaceChildren(...data.calls.flatMap((call, i) => callBlocks(call, i)));
        card.classList.add("wide");
        button.textContent = "Hide prompt and answer";
      } catch (error) { handle(error, box); }
    });
    card.append(button, box);
  }
  return card;
}

function callBlocks(call, i) {
  const prompt = (call.messages || []).map((m) => `[${m.role}]\n${m.content}`).join("\n\n");
  const answer = call.error ? `error: ${call.error}\n${call.raw || ""}` : call.raw || "";
  return [
    el("h5", { text: `call ${i + 1}: prompt (${call.prompt_tokens} tokens)` }),
    el("pre", { class: "prompt", text: prompt }),
    el("h5", { text: `call ${i + 1}: raw answer (${call.completion_tokens} tokens, ${Number(call.latency_ms || 0).toFixed(1)} ms, retries ${call.retries || 0})` }),
    el("pre", { class: "answer", text: answer }),
  ];
}

// wiring -----------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("forget").addEventListener("click", () => showLogin("Token forgotten."));
  $("search").addEventListener("submit", (event) => { event.preventDefault(); search(false); });
  $("more").addEventListener("click", () => search(true));
  start();
});
