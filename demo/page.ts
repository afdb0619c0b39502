// Copyright the sse authors. MIT license.
// The demo's single page: plain HTML, CSS and JavaScript, served inline (no
// build step, nothing fetched from elsewhere). It uses the browser's own
// EventSource for the channel, and fetch() with a small reader for the POST
// token stream (EventSource can only GET). User text is only ever put into
// the page with textContent.
//
// The page signs in (a session cookie) before it opens its stream, and keeps
// what it shows in sessionStorage with the last event id: a reload restores
// it and opens the stream with ?lastEventID=, since EventSource cannot send
// Last-Event-ID itself the first time, and the channel replays what the
// reload missed. "Sign out" ends the session; the server ends the tab's
// stream with a "signed-out" event, on which the page closes it (and the
// server would refuse its reconnection anyway, with 401).

/** The page at `/`. */
export const PAGE: string = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SSE demo: live channel</title>
<link rel="icon" href="data:,">
<style>
  :root {
    --bg: #f6f7fb; --card: #fff; --ink: #1d2330; --muted: #6b7385;
    --line: #e3e6ee; --accent: #2f6fed; --ok: #1a9d5b; --warn: #c98a00;
    --bad: #d0453a; --resume: #7a4cd8;
    font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  }
  * { box-sizing: border-box; }
  body { margin: 0; background: var(--bg); color: var(--ink); }
  header {
    display: flex; flex-wrap: wrap; gap: 12px; align-items: center;
    padding: 14px 22px; background: var(--card); border-bottom: 1px solid var(--line);
  }
  header h1 { font-size: 18px; margin: 0 12px 0 0; }
  .pill {
    display: inline-flex; gap: 6px; align-items: center; padding: 3px 10px;
    border-radius: 999px; background: var(--bg); border: 1px solid var(--line);
    font-size: 13px; white-space: nowrap;
  }
  .pill b { font-weight: 600; }
  .dot { width: 9px; height: 9px; border-radius: 50%; background: var(--muted); }
  .open .dot { background: var(--ok); }
  .connecting .dot { background: var(--warn); }
  .closed .dot { background: var(--bad); }
  .snapshot { border-color: var(--ok); color: var(--ok); }
  .resumed { border-color: var(--resume); color: var(--resume); }
  code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, monospace; }
  main {
    display: grid; gap: 18px; padding: 18px 22px;
    grid-template-columns: minmax(0, 3fr) minmax(0, 2fr);
  }
  @media (max-width: 900px) { main { grid-template-columns: 1fr; } }
  section {
    background: var(--card); border: 1px solid var(--line); border-radius: 10px;
    padding: 14px 16px; min-width: 0;
  }
  section h2 { font-size: 15px; margin: 0 0 10px; }
  .tabs { display: flex; gap: 6px; margin-bottom: 10px; }
  .tabs button { background: var(--bg); color: var(--ink); }
  .tabs button[aria-pressed="true"] { background: var(--accent); color: #fff; }
  button {
    font: inherit; border: 1px solid var(--line); border-radius: 7px;
    padding: 6px 12px; background: var(--accent); color: #fff; cursor: pointer;
  }
  button.secondary { background: var(--bg); color: var(--ink); }
  input, textarea {
    font: inherit; border: 1px solid var(--line); border-radius: 7px;
    padding: 6px 9px; min-width: 0;
  }
  #messages {
    list-style: none; margin: 0 0 10px; padding: 0; height: 300px; overflow-y: auto;
    border: 1px solid var(--line); border-radius: 8px;
  }
  #messages li { padding: 6px 10px; border-bottom: 1px solid var(--line); }
  #messages li .who { font-weight: 600; margin-right: 6px; }
  #messages li .meta { color: var(--muted); font-size: 12px; margin-left: 6px; }
  #messages li.from-snapshot { background: #f3fbf6; }
  #messages li.empty { color: var(--muted); font-style: italic; }
  form.chat { display: grid; grid-template-columns: 110px 1fr auto; gap: 8px; }
  .ticker { display: flex; align-items: baseline; gap: 14px; }
  #price { font-size: 30px; font-weight: 700; font-variant-numeric: tabular-nums; }
  #spark { width: 100%; height: 60px; display: block; margin-top: 8px; }
  dl { display: grid; grid-template-columns: auto 1fr; gap: 4px 12px; margin: 10px 0 0; font-size: 13px; }
  dt { color: var(--muted); }
  dd { margin: 0; font-variant-numeric: tabular-nums; }
  #log {
    list-style: none; margin: 0; padding: 0; height: 210px; overflow-y: auto;
    font: 12px ui-monospace, SFMono-Regular, Menlo, monospace;
  }
  #log li { padding: 2px 0; border-bottom: 1px dashed var(--line); white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  #log li.note { color: var(--resume); }
  .wide { grid-column: 1 / -1; }
  form.complete { display: grid; grid-template-columns: 1fr auto; gap: 8px; }
  #answer {
    min-height: 70px; margin-top: 10px; padding: 10px; border-radius: 8px;
    background: var(--bg); white-space: pre-wrap;
  }
  .hint { color: var(--muted); font-size: 13px; margin: 6px 0 0; }
  #signin-form { display: inline-flex; gap: 6px; }
  #signin-form[hidden], #me[hidden] { display: none; }
  #online { list-style: none; margin: 0 0 10px; padding: 0; display: flex; flex-wrap: wrap; gap: 6px; }
  #online li { padding: 2px 9px; border-radius: 999px; background: #eef8f2; border: 1px solid var(--ok); font-size: 13px; }
  #online li.me { font-weight: 600; }
</style>
</head>
<body>
<header>
  <h1>SSE demo</h1>
  <span id="status" class="pill connecting"><span class="dot"></span><span id="status-text">connecting</span></span>
  <span class="pill">lastEventId <code id="last-id">(none)</code></span>
  <span id="session" class="pill">waiting for the first event</span>
  <span class="pill">reconnects <b id="reconnects">0</b></span>
  <span class="pill">clients on the channel <b id="clients">?</b></span>
  <form id="signin-form" hidden>
    <input id="signin-name" maxlength="32" placeholder="your name" required autocomplete="off">
    <button type="submit">Sign in</button>
  </form>
  <span id="me" class="pill" hidden>signed in as <b id="me-name"></b>
    <button type="button" id="signout" class="secondary">Sign out</button></span>
</header>
<main>
  <section>
    <h2>Chat</h2>
    <div class="tabs" role="group" aria-label="Room">
      <button type="button" data-room="lobby" aria-pressed="true">#lobby</button>
      <button type="button" data-room="random" aria-pressed="false">#random</button>
    </div>
    <p class="hint">Online in this room (from <code>channel.clients()</code>):</p>
    <ul id="online"></ul>
    <ul id="messages"></ul>
    <form class="chat" id="chat-form">
      <input id="user" name="user" maxlength="32" placeholder="name" value="guest">
      <input id="text" name="text" maxlength="500" placeholder="Say something to the room" required autocomplete="off">
      <button type="submit">Send</button>
    </form>
    <p class="hint">Each room is a topic of one SSEChannel: this page subscribes to its room and to the ticker only. Open a second tab to chat with yourself.</p>
  </section>
  <section>
    <h2>Ticker <span class="hint">(topic "ticker", one event a second)</span></h2>
    <div class="ticker"><span id="price">–</span><span class="hint">tick <b id="tick">–</b></span></div>
    <canvas id="spark" width="400" height="60"></canvas>
    <dl>
      <dt>tick gaps</dt><dd id="gaps">0</dd>
      <dt>last resume</dt><dd id="resume-info">–</dd>
    </dl>
    <p>
      <button type="button" id="restart" class="secondary">Restart the channel</button>
    </p>
    <p class="hint">Closes the channel (every stream ends) and opens a new one on the same broker.
    The browser reconnects by itself with <code>Last-Event-ID</code>; the channel replays what was
    published meanwhile, so the ticker continues without a gap and the session shows <b>resumed</b>.
    A brand-new connection gets a <b>snapshot</b> instead.</p>
  </section>
  <section class="wide">
    <h2>Token stream <span class="hint">(POST /api/complete, one <code>sseResponse</code> per request)</span></h2>
    <form class="complete" id="complete-form">
      <input id="prompt" name="prompt" maxlength="2000" value="Explain Server-Sent Events in one paragraph" autocomplete="off">
      <button type="submit">Generate</button>
    </form>
    <div id="answer"></div>
    <p class="hint" id="answer-info"></p>
  </section>
  <section class="wide">
    <h2>Event log <span class="hint">(newest first)</span></h2>
    <ul id="log"></ul>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = {
  room: new URLSearchParams(location.search).get("room") === "random" ? "random" : "lobby",
  user: null,
  signedOut: false,
  source: null,
  /** The URL of the stream the page opened last. */
  url: "",
  lastEventId: "",
  reconnects: 0,
  session: "",
  resumedFrom: "",
  lastTick: null,
  gaps: 0,
  events: 0,
  chats: new Set(),
  /** The chat messages shown, kept for a reload. */
  shown: [],
  prices: [],
  /** Who is online in the room, as last fetched. */
  online: [],
};
window.demo = state;

// What a reload needs to go on where it was: kept per tab.
const SAVED = "sse-demo";
function save() {
  sessionStorage.setItem(SAVED, JSON.stringify({
    room: state.room,
    user: state.user,
    lastEventId: state.lastEventId,
    lastTick: state.lastTick,
    prices: state.prices,
    shown: state.shown.slice(-50),
  }));
}
function saved() {
  try {
    const value = JSON.parse(sessionStorage.getItem(SAVED) ?? "null");
    return value !== null && value.room === state.room && value.user === state.user ? value : null;
  } catch {
    return null;
  }
}

function log(text, note) {
  const item = document.createElement("li");
  item.textContent = new Date().toLocaleTimeString() + "  " + text;
  if (note) item.className = "note";
  const list = $("log");
  list.prepend(item);
  while (list.children.length > 200) list.lastChild.remove();
}

function setStatus(kind, text) {
  $("status").className = "pill " + kind;
  $("status-text").textContent = text;
}

function seen(event) {
  state.events++;
  if (event.lastEventId !== "") state.lastEventId = event.lastEventId;
  $("last-id").textContent = state.lastEventId || "(none)";
  save();
}

function addChat(message, fromSnapshot) {
  if (state.chats.has(message.id)) return;
  state.chats.add(message.id);
  state.shown.push(message);
  const list = $("messages");
  list.querySelector(".empty")?.remove();
  const item = document.createElement("li");
  if (fromSnapshot) item.className = "from-snapshot";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = message.user;
  const text = document.createElement("span");
  text.textContent = message.text;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = new Date(message.time).toLocaleTimeString() + "  #" + message.id;
  item.append(who, text, meta);
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

function showTick(tick) {
  // One the snapshot already showed: the same tick, not a gap.
  if (state.lastTick !== null && tick.n <= state.lastTick) return;
  if (state.lastTick !== null && tick.n !== state.lastTick + 1) {
    state.gaps++;
    log("gap in the ticker: " + state.lastTick + " then " + tick.n, true);
  }
  state.lastTick = tick.n;
  $("tick").textContent = tick.n;
  $("price").textContent = tick.price.toFixed(2);
  $("gaps").textContent = state.gaps;
  state.prices.push(tick.price);
  if (state.prices.length > 60) state.prices.shift();
  drawSpark();
}

function drawSpark() {
  const canvas = $("spark");
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const prices = state.prices;
  if (prices.length < 2) return;
  const low = Math.min(...prices), high = Math.max(...prices);
  const span = high - low || 1;
  context.strokeStyle = "#2f6fed";
  context.lineWidth = 2;
  context.beginPath();
  prices.forEach((price, i) => {
    const x = (i / (prices.length - 1)) * (width - 4) + 2;
    const y = height - 4 - ((price - low) / span) * (height - 8);
    i === 0 ? context.moveTo(x, y) : context.lineTo(x, y);
  });
  context.stroke();
}

function connect() {
  state.source?.close();
  state.lastTick = null;
  state.chats.clear();
  state.shown = [];
  state.prices = [];
  state.lastEventId = "";
  $("messages").replaceChildren();
  let url = "/events?room=" + encodeURIComponent(state.room);
  // After a reload: what the page showed, and the stream from where it was.
  const before = saved();
  if (before !== null && before.lastEventId !== "") {
    for (const message of before.shown) addChat(message, false);
    state.prices = before.prices;
    if (before.lastTick !== null) {
      state.lastTick = before.lastTick;
      $("tick").textContent = before.lastTick;
      $("price").textContent = (before.prices.at(-1) ?? 0).toFixed(2);
      drawSpark();
    }
    state.lastEventId = before.lastEventId;
    url += "&lastEventID=" + encodeURIComponent(before.lastEventId);
    log("reloaded: resuming after " + before.lastEventId, true);
  }
  state.url = url;
  const source = new EventSource(url);
  state.source = source;
  setStatus("connecting", "connecting");
  source.onopen = () => {
    setStatus("open", "open");
    log("open: " + url);
    refreshOnline();
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (401: the session ended elsewhere): sign in again.
      setStatus("closed", "closed");
      log("closed by the browser", true);
      whoAmI();
      return;
    }
    state.reconnects++;
    $("reconnects").textContent = state.reconnects;
    setStatus("connecting", "reconnecting");
    log("stream ended: the browser reconnects with Last-Event-ID " + (state.lastEventId || "(none)"), true);
  };
  source.addEventListener("signed-out", () => {
    // The server ended this stream: no reconnection.
    source.close();
    state.source = null;
    state.signedOut = true;
    sessionStorage.removeItem(SAVED);
    setStatus("closed", "signed out");
    log("signed out: the server ended this stream", true);
    showSignedIn(null);
  });
  source.addEventListener("snapshot", (event) => {
    const snapshot = JSON.parse(event.data);
    state.shown = [];
    state.prices = [];
    state.session = "snapshot";
    $("session").className = "pill snapshot";
    $("session").textContent = "snapshot: " + snapshot.messages.length + " messages of #" + snapshot.room +
      (snapshot.lastEventId ? " (id " + snapshot.lastEventId + " not resumable)" : "");
    $("messages").replaceChildren();
    if (snapshot.messages.length === 0) {
      const empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = "No messages in #" + snapshot.room + " yet.";
      $("messages").append(empty);
    }
    state.chats.clear();
    for (const message of snapshot.messages) addChat(message, true);
    state.lastTick = null;
    if (snapshot.tick) showTick(snapshot.tick);
    seen(event);
    log("snapshot: " + snapshot.messages.length + " messages, tick " + (snapshot.tick?.n ?? "none"), true);
  });
  source.addEventListener("resumed", (event) => {
    seen(event);
    const info = JSON.parse(event.data);
    state.session = "resumed";
    state.resumedFrom = info.from;
    $("session").className = "pill resumed";
    $("session").textContent = "resumed after " + info.from;
    $("resume-info").textContent = "after " + info.from + " at tick " + (state.lastTick ?? "–");
    log("resumed after " + info.from + ": missed events follow, no snapshot", true);
  });
  source.addEventListener("chat", (event) => {
    const message = JSON.parse(event.data);
    addChat({ ...message, id: event.lastEventId }, false);
    seen(event);
    log("#" + event.lastEventId + " chat " + message.user + ": " + message.text);
  });
  source.addEventListener("tick", (event) => {
    const tick = JSON.parse(event.data);
    showTick(tick);
    seen(event);
    log("#" + event.lastEventId + " tick " + tick.n + " " + tick.price.toFixed(2));
  });
}

for (const button of document.querySelectorAll("[data-room]")) {
  button.addEventListener("click", () => {
    if (state.room === button.dataset.room) return;
    state.room = button.dataset.room;
    for (const other of document.querySelectorAll("[data-room]")) {
      other.setAttribute("aria-pressed", String(other === button));
    }
    history.replaceState(null, "", "?room=" + state.room);
    if (state.user !== null) connect();
  });
  button.setAttribute("aria-pressed", String(button.dataset.room === state.room));
}

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (text === "") return;
  const response = await fetch("/api/chat", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ room: state.room, user: state.user ?? ($("user").value.trim() || "guest"), text }),
  });
  if (response.ok) $("text").value = "";
  else log("chat refused: " + (await response.json()).error, true);
});

$("restart").addEventListener("click", async () => {
  log("restarting the channel…", true);
  await fetch("/api/restart", { method: "POST" });
});

// The token stream: a POST, so fetch() and a minimal event-stream reader.
$("complete-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = $("answer");
  answer.textContent = "";
  $("answer-info").textContent = "streaming…";
  const started = performance.now();
  let tokens = 0;
  const response = await fetch("/api/complete", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ prompt: $("prompt").value }),
  });
  if (!response.ok) {
    $("answer-info").textContent = "refused: " + response.status;
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "", data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split(/\\r\\n|\\r|\\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (type === "token") { answer.textContent += data.join("\\n"); tokens++; }
        if (type === "done") $("answer-info").textContent = tokens + " tokens in " + Math.round(performance.now() - started) + " ms";
        type = ""; data = [];
      } else if (line.startsWith("event:")) type = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(line[5] === " " ? 6 : 5));
    }
  }
});

function showSignedIn(user) {
  state.user = user;
  $("signin-form").hidden = user !== null;
  $("me").hidden = user === null;
  $("me-name").textContent = user ?? "";
  if (user !== null) $("user").value = user;
  $("online").replaceChildren();
}

async function whoAmI() {
  const { user } = await (await fetch("/api/session")).json();
  showSignedIn(user);
  if (user === null) setStatus("closed", state.signedOut ? "signed out" : "not signed in");
  return user;
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch("/api/signin", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: $("signin-name").value.trim() }),
  });
  if (!response.ok) {
    log("sign-in refused: " + (await response.json()).error, true);
    return;
  }
  state.signedOut = false;
  showSignedIn((await response.json()).user);
  connect();
});

$("signout").addEventListener("click", async () => {
  log("signing out…", true);
  await fetch("/api/signout", { method: "POST" });
});

async function refreshOnline() {
  if (state.user === null) return;
  try {
    const { users } = await (await fetch("/api/online?room=" + encodeURIComponent(state.room))).json();
    state.online = users.map((entry) => entry.user);
    $("online").replaceChildren(...users.map((entry) => {
      const item = document.createElement("li");
      item.textContent = entry.user + (entry.tabs > 1 ? " ×" + entry.tabs : "");
      if (entry.user === state.user) item.className = "me";
      return item;
    }));
  } catch {
    // The next refresh tries again.
  }
}

async function refreshStats() {
  try {
    const stats = await (await fetch("/stats")).json();
    $("clients").textContent = stats.clients;
  } catch {
    $("clients").textContent = "?";
  }
}

whoAmI().then((user) => {
  if (user !== null) connect();
});
refreshStats();
setInterval(refreshStats, 3000);
setInterval(refreshOnline, 2000);
</script>
</body>
</html>
`;
