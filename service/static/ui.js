// driftrec /ui: a user's recent events, recommendations with explanations and interest drift.
// Plain browser JavaScript: no build step, nothing fetched from elsewhere. Calls the JSON API
// with the key pasted in the page (kept in localStorage); none is needed with auth disabled.
"use strict";

const KEY_STORAGE = "driftrec.apiKey";
const USER_STORAGE = "driftrec.userId";
const K = 10;
const NEIGHBOURS = 200; // how many neighbours of the top item the drift plot looks among
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
const userInput = $("user-id");
let current = null; // {userId, recommId}
let busy = false;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = {};
  const key = keyInput.value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.statusText;
    throw new ApiError(response.status, `${method} ${path}: ${response.status} ${message}`);
  }
  return data;
}

const enc = encodeURIComponent;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function shortTime(iso) {
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

async function load(userId) {
  // The user's summary is 404 until their first event: they still get (cold-start) items.
  const [user, recs] = await Promise.all([
    api("GET", `/v1/users/${enc(userId)}`).catch((error) => {
      if (error.status === 404) return { user_id: userId, event_count: 0, recent_items: [] };
      throw error;
    }),
    api("GET", `/v1/users/${enc(userId)}/recommendations?k=${K}&explain=true`),
  ]);
  let similarities = null;
  const top = recs.items[0];
  if (top && user.recent_items.length) {
    const near = await api("GET", `/v1/items/${enc(top.id)}/similar?k=${NEIGHBOURS}`);
    similarities = new Map(near.items.map((item) => [item.id, item.score]));
    similarities.set(top.id, 1);
  }
  current = { userId, recommId: recs.recomm_id };
  renderRecs(recs);
  renderEvents(user);
  renderPlot(user.recent_items, top, similarities);
}

function renderRecs(recs) {
  const list = $("recs");
  list.replaceChildren();
  list.dataset.recommId = recs.recomm_id;
  list.dataset.items = recs.items.map((item) => item.id).join(",");
  $("recs-meta").textContent =
    `served by ${recs.served_by} (${recs.strategy}), model ${recs.model_version ?? "none"}` +
    (recs.experiment ? `, experiment ${recs.experiment}: ${recs.arm} arm` : "");
  for (const item of recs.items) {
    const button = el(
      "button",
      { type: "button", class: "item", "data-item-id": item.id, title: "send a click event" },
      el("strong", {}, item.title),
      " ",
      el("span", { class: "score" }, `${item.id} · score ${item.score.toFixed(3)}`),
    );
    button.addEventListener("click", () => click(item.id));
    const entry = el("li", {}, button);
    const explanation = item.explanation;
    if (explanation) {
      const because = explanation.because.length
        ? "because of " +
          explanation.because
            .map((c) => `${c.title} (similarity ${c.similarity.toFixed(2)}, ` +
              `weight ${c.weight.toFixed(2)})`)
            .join("; ")
        : "no single item of the user's pulled it up";
      entry.append(el("div", { class: "because" }, `${explanation.served_by}: ${because}`));
    }
    list.append(entry);
  }
  if (!recs.items.length) list.append(el("li", {}, "nothing to recommend"));
}

function renderEvents(user) {
  const list = $("events");
  list.replaceChildren();
  $("events-meta").textContent = `${user.event_count} in all` +
    (user.last_event_at ? `, last ${shortTime(user.last_event_at)}` : "");
  for (const event of user.recent_items) {
    list.append(
      el(
        "li",
        {},
        el("strong", {}, event.type),
        ` ${event.title} (${event.id}) `,
        el("time", { datetime: event.timestamp }, shortTime(event.timestamp)),
      ),
    );
  }
  if (!user.recent_items.length) list.append(el("li", {}, "no events yet"));
}

function renderPlot(events, top, similarities) {
  const box = $("plot");
  box.replaceChildren();
  if (!top || !similarities || !events.length) {
    box.append(el("p", { class: "hint" }, "No events to plot yet."));
    return;
  }
  const width = 460, height = 220;
  const left = 40, right = 12, topPad = 12, bottom = 34;
  const times = events.map((event) => Date.parse(event.timestamp));
  let t0 = Math.min(...times), t1 = Math.max(...times);
  if (t1 === t0) { t0 -= 1000; t1 += 1000; }
  const scores = events.map((event) => similarities.get(event.id));
  const known = scores.filter((s) => s !== undefined);
  const y0 = Math.min(0, ...known), y1 = 1;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (s) => topPad + (1 - (s - y0) / (y1 - y0)) * (height - topPad - bottom);
  const chart = svg("svg", {
    id: "drift-plot", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `similarity of recent events to ${top.title}`,
  });
  chart.append(svg("rect", { x: left, y: topPad, width: width - left - right,
    height: height - topPad - bottom, fill: "#fcfcff", stroke: "#ccc" }));
  for (const tick of [y0, (y0 + y1) / 2, y1]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick),
      stroke: "#eee" }));
    chart.append(svg("text", { x: left - 4, y: y(tick) + 3, "text-anchor": "end" },
      tick.toFixed(1)));
  }
  chart.append(svg("text", { x: left, y: height - 18 }, new Date(t0).toLocaleTimeString()));
  chart.append(svg("text", { x: width - right, y: height - 18, "text-anchor": "end" },
    new Date(t1).toLocaleTimeString()));
  chart.append(svg("text", { x: left, y: height - 4 },
    `similarity to the top recommendation, ${top.title}`));
  // Oldest to newest, joined by a line through the known points.
  const order = events.map((event, i) => i).sort((a, b) => times[a] - times[b]);
  const points = order.filter((i) => scores[i] !== undefined)
    .map((i) => `${x(times[i]).toFixed(1)},${y(scores[i]).toFixed(1)}`);
  if (points.length > 1) {
    chart.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: "#7b8ce0" }));
  }
  for (const i of order) {
    const score = scores[i];
    const dot = svg("circle", {
      class: "event-dot", cx: x(times[i]).toFixed(1), r: 4,
      cy: y(score === undefined ? y0 : score).toFixed(1),
      fill: score === undefined ? "#fff" : "#2b3fb8", stroke: "#2b3fb8",
    });
    dot.append(svg("title", {}, `${events[i].type} ${events[i].title} at ` +
      `${shortTime(events[i].timestamp)}: ` +
      (score === undefined ? "not among the nearest items" : `similarity ${score.toFixed(3)}`)));
    chart.append(dot);
  }
  box.append(chart);
}

async function click(itemId) {
  if (!current || busy) return;
  busy = true;
  try {
    const id = crypto.randomUUID ? crypto.randomUUID() :
      `ui-${Date.now()}-${Math.random().toString(16).slice(2)}`;
    const answer = await api("POST", "/v1/events", {
      events: [{
        id, user_id: current.userId, item_id: itemId, type: "click",
        timestamp: new Date().toISOString(), recomm_id: current.recommId,
      }],
    });
    if (answer.rejected.length) throw new Error(answer.rejected[0].error);
    setStatus(`clicked ${itemId}; refreshing…`);
    await load(current.userId);
    setStatus(`clicked ${itemId}: recommendations refreshed`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    busy = false;
  }
}

$("user-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const userId = userInput.value.trim();
  if (!userId) return;
  localStorage.setItem(KEY_STORAGE, keyInput.value.trim());
  localStorage.setItem(USER_STORAGE, userId);
  setStatus(`loading ${userId}…`);
  try {
    await load(userId);
    setStatus(`showing ${userId}`);
  } catch (error) {
    const hint = error.status === 401 ? " (paste an API key with the read and write scopes)" : "";
    setStatus(error.message + hint, true);
  }
});

keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
userInput.value = localStorage.getItem(USER_STORAGE) || "";
