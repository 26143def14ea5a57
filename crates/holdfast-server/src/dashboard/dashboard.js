// The live dashboard: signs in with the operator token (kept in this tab's sessionStorage,
// never in a URL), reads GET /v1/events as a stream of server-sent events (fetch, because
// EventSource cannot send a header), and draws every sample. Reconnects with Last-Event-ID.
"use strict";

const TOKEN_KEY = "holdfast-operator-token";
const HISTORY_MAX = 600;
const CHART_POINTS = 300;
const LAYERS = ["sold", "held", "allotted", "shares", "common"];
// The same colours as the legend's (dashboard.css).
const COLOURS = { common: "#4caf50", shares: "#9ccc65", allotted: "#42a5f5", held: "#ffb300",
  sold: "#8d6e63" };

const history = [];
let lastEventId = null;
let reading = null;

const $ = (selector, root = document) => root.querySelector(selector);
const number = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
const rate = (n) => (n === null || n === undefined ? "—" : n.toFixed(1));

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function setConnection(state, text) {
  const badge = $("#connection");
  badge.className = "badge " + state;
  badge.textContent = text;
}

function showSignIn(message) {
  $("#sign-in").hidden = false;
  $("#live").hidden = true;
  $("#sign-out").hidden = true;
  $("#sign-in-error").textContent = message || "";
  setConnection("signed-out", "signed out");
}

function showLive() {
  $("#sign-in").hidden = true;
  $("#live").hidden = false;
  $("#sign-out").hidden = false;
}

async function connect() {
  if (reading) reading.abort();
  const controller = new AbortController();
  reading = controller;
  const headers = { Authorization: "Bearer " + token() };
  if (lastEventId !== null) headers["Last-Event-ID"] = String(lastEventId);
  try {
    const response = await fetch("/v1/events", { headers, signal: controller.signal });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn("That token was not accepted.");
      return;
    }
    if (!response.ok) throw new Error("the feed answered " + response.status);
    showLive();
    setConnection("live", "live");
    await readEvents(response.body.getReader());
  } catch (error) {
    if (controller.signal.aborted) return;
  }
  if (reading !== controller || !token()) return;
  setConnection("reconnecting", "reconnecting…");
  setTimeout(() => { if (reading === controller) connect(); }, 1000);
}

async function readEvents(reader) {
  const decoder = new TextDecoder();
  let unread = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    unread += decoder.decode(value, { stream: true });
    let end;
    while ((end = unread.indexOf("\n\n")) >= 0) {
      handleEvent(unread.slice(0, end));
      unread = unread.slice(end + 2);
    }
  }
}

function handleEvent(text) {
  let id = null, data = "";
  for (const line of text.split("\n")) {
    if (line.startsWith("id:")) id = line.slice(3).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (id === null || data === "") return; // a keep-alive
  lastEventId = id;
  const sample = JSON.parse(data);
  history.push(sample);
  if (history.length > HISTORY_MAX) history.shift();
  render(sample);
}

function render(sample) {
  const server = sample.server;
  const overloaded = server.overloaded
    ? '<span class="badge overloaded">overloaded: shedding</span> ' : "";
  $("#server").innerHTML = overloaded +
    `${rate(server.requests_per_s)} req/s · ${rate(server.shed_per_s)} refused (429)/s · ` +
    `p50 ${server.p50_ms === null ? "—" : server.p50_ms.toFixed(2)} ms · ` +
    `p99 ${server.p99_ms === null ? "—" : server.p99_ms.toFixed(2)} ms`;
  $("#server").dataset.shedTotal = server.shed_total;
  $("#no-sales").hidden = sample.sales.length > 0;
  for (const sale of sample.sales) renderSale(sale);
  renderTills(sample.tills, Date.parse(sample.at));
}

function saleCard(id) {
  let card = document.querySelector(`article[data-sale="${CSS.escape(id)}"]`);
  if (card) return card;
  card = $("#sale-template").content.firstElementChild.cloneNode(true);
  card.dataset.sale = id;
  for (const button of card.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", () => act(card, id, button.dataset.action));
  }
  $("#sales").appendChild(card);
  return card;
}

function setField(card, name, text) {
  const element = card.querySelector(`[data-field="${name}"]`);
  if (element) element.textContent = text;
}

function renderSale(sale) {
  const card = saleCard(sale.id);
  setField(card, "name", sale.name);
  setField(card, "id", sale.id);
  const state = card.querySelector('[data-field="state"]');
  state.textContent = sale.state.replace("_", " ");
  state.className = "badge " + sale.state;
  renderPaused(card, sale.paused);
  for (const bucket of ["available", "shares", "allotted", "held", "sold", "total"]) {
    setField(card, bucket, number(sale.stock[bucket]));
  }
  setField(card, "holds_per_s", rate(sale.holds_per_s));
  setField(card, "orders_per_s", rate(sale.orders_per_s));
  setField(card, "orders", number(sale.orders));
  setField(card, "promising", sale.promising || "—");
  const queued = sale.queue.mode !== "none";
  card.querySelector('[data-field="queue"]').hidden = !queued;
  for (const button of card.querySelectorAll('button[data-action^="waiting-room/"]')) {
    button.hidden = !queued;
  }
  for (const name of ["waiting", "admitted", "admission_per_s", "passes_outstanding"]) {
    setField(card, name, number(sale.queue[name]));
  }
  const series = history.map((s) => s.sales.find((x) => x.id === sale.id)).filter(Boolean)
    .slice(-CHART_POINTS);
  drawStock(card.querySelector('[data-chart="stock"]'), series);
  if (queued) drawLine(card.querySelector('[data-chart="queue"]'), series.map((s) => s.queue.waiting));
}

function renderPaused(card, paused) {
  const badge = card.querySelector('[data-field="paused-badge"]');
  const parts = [];
  if (paused.sale) parts.push("sale paused");
  if (paused.waiting_room) parts.push("waiting room paused");
  badge.hidden = parts.length === 0;
  badge.textContent = parts.join(", ");
  card.querySelector('[data-action="pause"]').disabled = paused.sale;
  card.querySelector('[data-action="resume"]').disabled = !paused.sale;
  card.querySelector('[data-action="waiting-room/pause"]').disabled = paused.waiting_room;
  card.querySelector('[data-action="waiting-room/resume"]').disabled = !paused.waiting_room;
}

function layersOf(s) {
  const st = s.stock;
  return { sold: st.sold, held: st.held, allotted: st.allotted, shares: st.shares,
    common: st.available - st.shares };
}

function svg(name, attributes) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function drawStock(chart, series) {
  chart.replaceChildren();
  if (series.length === 0) return;
  const [width, height] = [600, 160];
  const top = Math.max(1, ...series.map((s) => s.stock.total));
  const x = (i) => (series.length === 1 ? width : (i / (series.length - 1)) * width);
  const y = (v) => height - (v / top) * height;
  const below = series.map(() => 0);
  for (const layer of LAYERS) {
    const lower = below.slice();
    series.forEach((s, i) => { below[i] += layersOf(s)[layer]; });
    const upper = below.map((v, i) => `${x(i)},${y(v)}`);
    const back = lower.map((v, i) => `${x(i)},${y(v)}`).reverse();
    if (series.length === 1) { upper.unshift(`0,${y(below[0])}`); back.push(`0,${y(lower[0])}`); }
    chart.appendChild(svg("polygon", { points: upper.concat(back).join(" "),
      fill: COLOURS[layer], "data-layer": layer }));
  }
}

function drawLine(chart, values) {
  chart.replaceChildren();
  if (values.length === 0) return;
  const [width, height] = [600, 80];
  const top = Math.max(1, ...values);
  const x = (i) => (values.length === 1 ? width : (i / (values.length - 1)) * width);
  const points = values.map((v, i) => `${x(i)},${height - (v / top) * (height - 4)}`);
  chart.appendChild(svg("polyline", { points: points.join(" "), fill: "none",
    stroke: "#5c6bc0", "stroke-width": 2 }));
}

function ago(at, now) {
  if (!at) return "never";
  const seconds = Math.max(0, Math.round((now - Date.parse(at)) / 1000));
  return seconds < 90 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

const REACH = {
  online: "online",
  deferred: "reachable — server overloaded, sync put off",
  unreachable: "unreachable — no contact",
  never: "unreachable — never seen",
};

function renderTills(tills, now) {
  $("#tills-summary").textContent = `${tills.total} · ${tills.online} online · ` +
    `${tills.unreachable} unreachable · ${tills.deferred} put off by an overloaded server`;
  const rows = tills.list.map((till) => {
    const row = document.createElement("tr");
    row.dataset.till = till.terminal_id;
    const offline = till.offline_since ? ` (offline since ${till.offline_since})` : "";
    const cells = [
      [till.terminal_id], [till.store],
      [REACH[till.reach], "reach", till.reach],
      [ago(till.last_contact_at, now) + offline, "last_contact"],
      [number(till.entries_pending), "entries_pending", null, true],
      [number(till.quarantined), "quarantined", null, true],
      [number(till.allotment_left), "allotment_left", null, true],
    ];
    for (const [text, field, badge, numeric] of cells) {
      const cell = document.createElement("td");
      if (badge) {
        const span = document.createElement("span");
        span.className = "badge " + badge;
        span.textContent = text;
        cell.appendChild(span);
      } else cell.textContent = text;
      if (field) cell.dataset.field = field;
      if (numeric) cell.className = "number";
      row.appendChild(cell);
    }
    return row;
  });
  $("#tills tbody").replaceChildren(...rows);
}

async function act(card, id, action) {
  setField(card, "action-error", "");
  const response = await fetch(`/v1/sales/${encodeURIComponent(id)}/${action}`, {
    method: "POST", headers: { Authorization: "Bearer " + token() },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    setField(card, "action-error", body.error ? body.error.message : "failed: " + response.status);
    return;
  }
  renderPaused(card, body.paused);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    connect();
  });
  $("#sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    if (reading) reading.abort();
    reading = null;
    showSignIn();
  });
  if (token()) connect(); else showSignIn();
});
