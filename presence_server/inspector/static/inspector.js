// The inspector page: one keyset of the presence server, live. It reads only the admin API's JSON
// (docs/protocol.md 9.2), so everything shown here can be had with any HTTP client:
//   GET  admin/keysets/<keyset>/snapshot   who is where, with deadlines, state, groups
//   GET  admin/keysets/<keyset>/messages   the last messages of each channel
//   GET  admin/keysets/<keyset>/events     the live feed, a long-poll (tt = the cursor)
//   POST admin/keysets/<keyset>/leave, /timeout, /reset, admin/clock/advance
// Names, uuids, states and messages are the users' own: they are set as text, never as markup.
// With PRESENCE_ADMIN_TOKEN set, every call carries "Authorization: Bearer <token>". The token is
// typed into the page (or given once as #token=... in the address) and kept in sessionStorage.
// The feed is a long-poll rather than server-sent events because EventSource cannot send that header.

const TOKEN_KEY = "presence-inspector-token";
const FEED_ITEMS = 200; // entries kept in the feed list
const MESSAGES = 10; // last messages shown per channel
const REFRESH_MS = 5000; // deadlines move with heartbeats, which make no event: read them again now and then

const $ = (id) => document.getElementById(id);

const page = {
  subKey: new URLSearchParams(location.search).get("sub_key") || "",
  token: readToken(),
  generation: 0, // bumped on each (re)start: a feed loop of an older one stops
  abort: null, // the running feed request's AbortController
  snapshot: null,
  snapshotAt: 0, // performance.now() when the snapshot arrived: server time runs on from snapshot.now
  refreshTimer: null,
  wanted: { snapshot: false, messages: false },
  noticeTimer: null,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readToken() {
  let token = "";
  try {
    token = sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    // storage may be off; the token then lasts as long as the page
  }
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    token = fromHash;
    saveToken(token);
    // Out of the address bar and the history.
    history.replaceState(null, "", location.pathname + location.search);
  }
  return token;
}

function saveToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // see readToken
  }
}

function keysetPath(what) {
  return `admin/keysets/${encodeURIComponent(page.subKey)}/${what}`;
}

function query(params) {
  const parts = Object.entries(params)
    .filter(([, value]) => value !== undefined && value !== "")
    .map(([name, value]) => `${name}=${encodeURIComponent(value)}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

async function api(method, path, signal) {
  const headers = {};
  if (page.token) headers.Authorization = `Bearer ${page.token}`;
  const response = await fetch(path, { method, headers, signal, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // an answer without JSON: reported by its status below
  }
  if (response.status === 401) askForToken(page.token ? "That admin token was refused." : "");
  if (!response.ok) {
    const message = body && typeof body.message === "string" ? body.message : response.statusText;
    throw new ApiError(response.status, `${response.status} ${message}`);
  }
  return body;
}

// -- building elements ------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("data-")) node.dataset[dataName(name)] = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function dataName(attribute) {
  return attribute.slice(5).replace(/-([a-z])/g, (_, letter) => letter.toUpperCase());
}

// JSON with a space after each comma and colon, so that a long state wraps between its members.
function json(value) {
  const text = spaced(value);
  return text.length > 300 ? `${text.slice(0, 300)}...` : text;
}

function spaced(value) {
  if (Array.isArray(value)) return `[${value.map(spaced).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    const members = Object.entries(value).map(([name, member]) => `${JSON.stringify(name)}: ${spaced(member)}`);
    return `{${members.join(", ")}}`;
  }
  return JSON.stringify(value);
}

function empty(text) {
  return el("p", { class: "empty", text });
}

// -- time -------------------------------------------------------------------------------------

function serverNow() {
  if (!page.snapshot) return null;
  return page.snapshot.now + (performance.now() - page.snapshotAt) / 1000;
}

function clockText(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function timeOfDay(seconds) {
  return new Date(seconds * 1000).toISOString().slice(11, 19);
}

function leftText(seconds) {
  if (seconds <= 0) return "due: times out at the next sweep";
  const whole = Math.ceil(seconds);
  if (whole < 60) return `${whole} s`;
  const minutes = Math.floor(whole / 60);
  if (minutes < 60) return `${minutes} min ${String(whole % 60).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

function tick() {
  const now = serverNow();
  $("clock").textContent = now === null ? "server clock: -" : `server clock: ${clockText(now)}`;
  if (now === null) return;
  for (const cell of document.querySelectorAll("td.left")) {
    const left = Number(cell.dataset.deadline) - now;
    cell.textContent = leftText(left);
    cell.classList.toggle("soon", left > 0 && left <= 10);
    cell.classList.toggle("due", left <= 0);
  }
}

// -- what is shown ----------------------------------------------------------------------------

function renderSnapshot(snapshot) {
  page.snapshot = snapshot;
  page.snapshotAt = performance.now();
  const names = Object.keys(snapshot.channels).sort();
  const total = names.reduce((sum, name) => sum + snapshot.channels[name].occupancy, 0);
  $("summary").textContent = `${names.length} occupied, ${total} present`;
  const channels = names.map((name) => channelCard(name, snapshot.channels[name]));
  $("channels").replaceChildren(...(channels.length ? channels : [empty("Nobody is present in this keyset.")]));
  renderGroups(snapshot.groups);
  document.body.dataset.loaded = "1";
  tick();
}

function channelCard(name, channel) {
  const rows = Object.keys(channel.occupants)
    .sort()
    .map((uuid) => {
      const occupant = channel.occupants[uuid];
      const state = Object.keys(occupant.state).length ? el("code", { text: json(occupant.state) }) : "-";
      const act = (action, label) =>
        el("button", { type: "button", class: "small", "data-action": action, text: label });
      return el(
        "tr",
        { class: "occupant", "data-channel": name, "data-uuid": uuid },
        el("td", { class: "uuid", text: uuid }),
        el("td", { class: "state" }, state),
        el("td", { class: "left", "data-deadline": String(occupant.deadline) }),
        el("td", { class: "actions" }, act("leave", "Leave"), act("timeout", "Time out")),
      );
    });
  const head = el(
    "tr",
    {},
    el("th", { text: "uuid" }),
    el("th", { text: "state" }),
    el("th", { text: "time left" }),
    el("th", { text: "" }),
  );
  return el(
    "article",
    { class: "channel", "data-channel": name },
    el(
      "h3",
      {},
      el("span", { class: "name", text: name }),
      el("span", { class: "occupancy", text: `${channel.occupancy} present` }),
    ),
    el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)),
  );
}

function renderGroups(groups) {
  const names = Object.keys(groups).sort();
  if (!names.length) {
    $("groups").replaceChildren(empty("None."));
    return;
  }
  const list = el("dl", { class: "groups" });
  for (const name of names) {
    const members = groups[name].map((channel) => el("span", { class: "chip", text: channel }));
    list.append(el("dt", { text: name }), el("dd", {}, ...(members.length ? members : ["(empty)"])));
  }
  $("groups").replaceChildren(list);
}

function renderMessages(channels) {
  const names = Object.keys(channels).sort();
  if (!names.length) {
    $("messages").replaceChildren(empty("None."));
    return;
  }
  const blocks = names.map((name) =>
    el(
      "div",
      { class: "message-channel", "data-channel": name },
      el("h3", { text: name }),
      el("ol", { class: "messages" }, ...channels[name].slice().reverse().map(messageItem)),
    ),
  );
  $("messages").replaceChildren(...blocks);
}

function messageItem(item) {
  const seconds = Number(BigInt(item.timetoken) / 10000n) / 1000;
  return el(
    "li",
    { class: `message ${item.type}` },
    el("time", { text: timeOfDay(seconds) }),
    item.type === "signal" ? el("span", { class: "badge signal", text: "signal" }) : null,
    item.uuid ? el("span", { class: "who", text: item.uuid }) : null,
    el("code", { text: json(item.message) }),
  );
}

function feedItem(event) {
  const details = [];
  if (event.uuid) details.push(el("span", { class: "who", text: event.uuid }));
  for (const list of ["join", "leave", "timeout"]) {
    if (event[list]) details.push(el("span", { class: "list", text: `${list}: ${event[list].join(", ")}` }));
  }
  if (event.here_now_refresh) details.push(el("span", { class: "list", text: "ask here now" }));
  if (event.state) details.push(el("code", { text: json(event.state) }));
  return el(
    "li",
    {
      class: `event ${event.action}`,
      "data-action": event.action,
      "data-channel": event.channel,
      "data-uuid": event.uuid,
    },
    el("time", { text: timeOfDay(event.timestamp) }),
    el("span", { class: `badge ${event.action}`, text: event.action }),
    el("span", { class: "where", text: event.channel }),
    ...details,
    el("span", { class: "occupancy", text: `occupancy ${event.occupancy}` }),
  );
}

function addToFeed(events) {
  const feed = $("feed");
  for (const event of events) feed.prepend(feedItem(event));
  while (feed.children.length > FEED_ITEMS) feed.lastElementChild.remove();
}

function notice(text, kind = "info") {
  const node = $("notice");
  node.textContent = text;
  node.className = kind;
  clearTimeout(page.noticeTimer);
  if (kind === "info") page.noticeTimer = setTimeout(() => (node.textContent = ""), 5000);
}

function feedState(state, text) {
  document.body.dataset.feed = state;
  const pill = $("feed-state");
  pill.textContent = text;
  pill.className = `pill ${state}`;
}

function askForToken(message) {
  const form = $("token-form");
  form.hidden = false;
  form.classList.add("wanted");
  notice(message || "This server asks for its admin token (PRESENCE_ADMIN_TOKEN).", "error");
  $("token").focus();
}

// -- reading ----------------------------------------------------------------------------------

async function loadSnapshot() {
  renderSnapshot(await api("GET", keysetPath("snapshot")));
}

async function loadMessages() {
  renderMessages((await api("GET", keysetPath("messages") + query({ count: MESSAGES }))).channels);
}

// Reads again what the feed says has changed, once for a burst of events.
function refreshSoon(what) {
  Object.assign(page.wanted, what);
  if (page.refreshTimer !== null) return;
  page.refreshTimer = setTimeout(async () => {
    page.refreshTimer = null;
    const { snapshot, messages } = page.wanted;
    page.wanted = { snapshot: false, messages: false };
    try {
      await Promise.all([snapshot ? loadSnapshot() : null, messages ? loadMessages() : null]);
    } catch (error) {
      notice(`Could not read the keyset: ${error.message}`, "error");
    }
  }, 30);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function feedLoop(generation, signal) {
  let cursor = ""; // none: the first call answers at once with the cursor to poll from
  let backoff = 500;
  while (generation === page.generation) {
    try {
      const body = await api("GET", keysetPath("events") + query({ messages: 1, tt: cursor }), signal);
      if (generation !== page.generation) return;
      if (!cursor) feedState("live", "feed live");
      cursor = body.tt;
      backoff = 500;
      const presence = body.events.filter((event) => event.type === "presence");
      if (presence.length) addToFeed(presence);
      refreshSoon({ snapshot: presence.length > 0, messages: presence.length < body.events.length });
    } catch (error) {
      if (signal.aborted || generation !== page.generation) return;
      feedState("retrying", `feed: ${error.message}; retrying`);
      // Refused (a token missing or wrong, not a loopback client, a bad keyset name): asking again
      // would change nothing; a new token or keyset starts the feed again.
      if ([400, 401, 403, 404].includes(error.status)) return;
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  }
}

function start() {
  page.generation += 1;
  if (page.abort) page.abort.abort();
  if (!page.subKey) {
    feedState("off", "feed off");
    $("sub-key").focus();
    return;
  }
  document.title = `${page.subKey}: presence inspector`;
  page.abort = new AbortController();
  feedState("connecting", "feed connecting");
  feedLoop(page.generation, page.abort.signal);
  Promise.all([loadSnapshot(), loadMessages()]).catch((error) =>
    notice(`Could not read the keyset: ${error.message}`, "error"),
  );
}

// -- steering ---------------------------------------------------------------------------------

async function act(what, path, after) {
  try {
    const body = await api("POST", path);
    notice(after(body));
    await Promise.all([loadSnapshot(), loadMessages()]);
  } catch (error) {
    notice(`${what} failed: ${error.message}`, "error");
  }
}

function advance(event) {
  event.preventDefault();
  const seconds = $("advance-seconds").value.trim();
  act("Advancing the clock", `admin/clock/advance${query({ seconds })}`, (body) => {
    const timeouts = body.timeouts === 1 ? "1 user timed out" : `${body.timeouts} users timed out`;
    return `Clock moved ${seconds} s (offset ${body.offset} s); ${timeouts}.`;
  });
}

function occupantAction(event) {
  const button = event.target.closest("button[data-action]");
  if (!button || !page.subKey) return;
  const row = button.closest("tr.occupant");
  const { channel, uuid } = row.dataset;
  const action = button.dataset.action;
  const path = keysetPath(action) + query({ uuid, channel });
  if (action === "leave") act("Leave", path, () => `${uuid} left ${channel}.`);
  else act("Time out", path, (body) => `${uuid} timed out on ${body.channels.join(", ") || "no channel"}.`);
}

function reset() {
  if (!page.subKey) return;
  if (!confirm(`Drop everything of keyset ${page.subKey}: presence, state, groups, messages?`)) return;
  act("Reset", keysetPath("reset"), (body) => `Keyset reset: ${body.removed_keys} keys removed.`);
}

function useToken(event) {
  event.preventDefault();
  page.token = $("token").value;
  saveToken(page.token);
  $("token").value = "";
  $("token-form").classList.remove("wanted");
  notice("Token set.");
  start();
}

function refresh() {
  if (page.subKey) refreshSoon({ snapshot: true, messages: true });
}

$("sub-key").value = page.subKey;
$("keyset-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const subKey = $("sub-key").value.trim();
  if (!subKey) return;
  history.pushState(null, "", `inspector${query({ sub_key: subKey })}`);
  page.subKey = subKey;
  $("feed").replaceChildren();
  start();
});
window.addEventListener("popstate", () => {
  page.subKey = new URLSearchParams(location.search).get("sub_key") || "";
  $("sub-key").value = page.subKey;
  $("feed").replaceChildren();
  start();
});
$("token-form").addEventListener("submit", useToken);
$("advance-form").addEventListener("submit", advance);
$("channels").addEventListener("click", occupantAction);
$("reset").addEventListener("click", reset);
$("refresh").addEventListener("click", refresh);
if (page.token) $("token-form").hidden = false;
setInterval(tick, 250);
setInterval(() => {
  if (!document.hidden) refresh();
}, REFRESH_MS);
start();
