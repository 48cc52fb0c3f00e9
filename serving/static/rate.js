// The rater page: chat and rate, compare two replies, review queue. Plain JavaScript, no dependencies.
// The API token lives in sessionStorage (this tab's session only) and travels in the Authorization header,
// never in a URL.
"use strict";

const TOKEN_KEY = "rlhf-api-token";
const $ = (id) => document.getElementById(id);
const state = { panel: "chat", chat: null, compare: null, queue: null, queueOffset: 0 };

// -- messages -------------------------------------------------------------------------------------------

function showError(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = false;
  $("status").textContent = "";
}

function showStatus(text) {
  $("message").hidden = true;
  $("message").textContent = "";
  $("status").textContent = text;
}

function detailOf(body) {
  if (!body) return "";
  if (Array.isArray(body)) return body.map(detailOf).join("; ");
  if (typeof body === "string") return body;
  if (body.error) return typeof body.error === "string" ? body.error : body.error.message;
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return JSON.stringify(body);
}

function explain(status, body) {
  const detail = detailOf(body);
  if (status === 401) {
    return "The service refused the API token (401 Unauthorized). Enter your rater token (from `rlhf raters add`) or the RLHF_API_TOKEN the service was started with in the API token field, then try again.";
  }
  if (status === 404) return `Not found (404): ${detail || "the reply is unknown to the service"}.`;
  if (status === 413) return `Too long (413): ${detail}. Shorten the message.`;
  if (status >= 400 && status < 500) return `The service could not accept this (${status}): ${detail}`;
  return `The service failed (${status}): ${detail || "no details"}. Try again in a moment.`;
}

class ApiError extends Error {}

async function api(path, { method = "GET", body, auth = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(`Could not reach the service (network error: ${err.message}). Is it running, and is this page served by it?`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) throw new ApiError(explain(response.status, data));
  return data;
}

async function guarded(work) {
  try {
    await work();
  } catch (err) {
    showError(err instanceof ApiError ? err.message : `Something went wrong in the page: ${err.message}`);
  }
}

// -- token ----------------------------------------------------------------------------------------------

function refreshTokenState() {
  $("token-state").textContent = sessionStorage.getItem(TOKEN_KEY)
    ? "Token set for this browser session."
    : "No token entered (kept for this browser session only).";
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  refreshTokenState();
  showStatus(value ? "Token saved for this session." : "Token cleared.");
});

// -- tabs -----------------------------------------------------------------------------------------------

const PANELS = ["chat", "compare", "queue"];

function selectPanel(name, focus = false) {
  state.panel = name;
  for (const p of PANELS) {
    const tab = $(`tab-${p}`);
    const on = p === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${p}`).hidden = !on;
  }
  if (focus) $(`tab-${name}`).focus();
  if (name === "queue" && sessionStorage.getItem(TOKEN_KEY)) guarded(loadQueue);
}

for (const p of PANELS) {
  const tab = $(`tab-${p}`);
  tab.addEventListener("click", () => selectPanel(p));
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    event.preventDefault();
    selectPanel(PANELS[(PANELS.indexOf(p) + step + PANELS.length) % PANELS.length], true);
  });
}

// Enter sends, Shift+Enter makes a new line.
for (const id of ["chat-prompt", "compare-prompt"]) {
  $(id).addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $(id).form.requestSubmit();
    }
  });
}

// -- rating buttons ---------------------------------------------------------------------------------------

function buildStars(containerId, onRate) {
  const box = $(containerId);
  for (let n = 1; n <= 5; n++) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = String(n);
    b.dataset.rating = String(n);
    b.setAttribute("aria-label", `Rate ${n} of 5`);
    b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", () => guarded(() => onRate(n)));
    box.appendChild(b);
  }
}

function markStars(containerId, n) {
  for (const b of $(containerId).querySelectorAll("button")) {
    b.setAttribute("aria-pressed", String(Number(b.dataset.rating) === n));
  }
}

async function sendRating(id, rating, commentId) {
  const comment = $(commentId).value.trim();
  const body = { id, rating };
  if (comment) body.comment = comment;
  const result = await api("/feedback", { method: "POST", body, auth: true });
  return result;
}

// -- chat and rate ----------------------------------------------------------------------------------------

$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    const prompt = $("chat-prompt").value;
    if (!prompt.trim()) throw new ApiError("Type a message first.");
    showStatus("Waiting for the model…");
    $("chat-send").disabled = true;
    try {
      const out = await api("/generate", { method: "POST", body: { prompt } });
      state.chat = out;
      $("chat-text").textContent = out.text || "(empty reply)";
      $("chat-version").textContent = out.model_version;
      $("chat-id").textContent = out.id;
      $("chat-reply").dataset.id = out.id;
      $("chat-comment").value = "";
      markStars("chat-stars", 0);
      $("chat-reply").hidden = false;
      $("chat-reply").focus();
      showStatus(`Reply from model ${out.model_version}. Rate it 1 to 5.`);
    } finally {
      $("chat-send").disabled = false;
    }
  });
});

buildStars("chat-stars", async (n) => {
  if (!state.chat) throw new ApiError("Send a message first; then rate the reply.");
  const result = await sendRating(state.chat.id, n, "chat-comment");
  markStars("chat-stars", n);
  showStatus(result.duplicate ? `Rating ${n} was already saved.` : `Rating ${n} saved. Thank you!`);
});

// -- compare ----------------------------------------------------------------------------------------------

$("compare-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    const prompt = $("compare-prompt").value;
    if (!prompt.trim()) throw new ApiError("Type a message first.");
    showStatus("Waiting for two replies…");
    $("compare-send").disabled = true;
    try {
      // the champion's reply and the candidate's (when one is served), blind: no versions on the page
      const out = await api("/compare", { method: "POST", body: { prompt } });
      const replies = out.replies.slice();
      if (Math.random() < 0.5) replies.reverse(); // random order (the service shuffles too)
      state.compare = { a: replies[0], b: replies[1], done: false };
      $("compare-a").textContent = replies[0].text || "(empty reply)";
      $("compare-b").textContent = replies[1].text || "(empty reply)";
      $("compare-replies").dataset.a = replies[0].id;
      $("compare-replies").dataset.b = replies[1].id;
      $("compare-replies").hidden = false;
      for (const id of ["choose-a", "choose-b", "choose-tie"]) $(id).disabled = false;
      $("choose-a").focus();
      const from = out.candidate ? "from two models (which is which stays hidden)" : "from the model";
      showStatus(`Two replies ${from}. Which is better? (a, b or t for a tie)`);
    } finally {
      $("compare-send").disabled = false;
    }
  });
});

async function choose(which) {
  const c = state.compare;
  if (!c || c.done) throw new ApiError("Ask for two replies first.");
  const [chosen, rejected] = which === "b" ? [c.b, c.a] : [c.a, c.b];
  const body = { chosen_id: chosen.id, rejected_id: rejected.id, tie: which === "tie" };
  const result = await api("/feedback", { method: "POST", body, auth: true });
  c.done = true;
  for (const id of ["choose-a", "choose-b", "choose-tie"]) $(id).disabled = true;
  const what = which === "tie" ? "Tie" : `Reply ${which.toUpperCase()} is better`;
  showStatus(result.duplicate ? `${what}: already saved.` : `${what}: saved. Thank you!`);
  $("compare-prompt").focus();
}

$("choose-a").addEventListener("click", () => guarded(() => choose("a")));
$("choose-b").addEventListener("click", () => guarded(() => choose("b")));
$("choose-tie").addEventListener("click", () => guarded(() => choose("tie")));

// -- review queue -------------------------------------------------------------------------------------------

async function loadQueue() {
  const page = await api(`/feedback/queue?limit=1&offset=${state.queueOffset}`, { auth: true });
  if (page.items.length === 0 && state.queueOffset > 0 && page.total > 0) {
    state.queueOffset = 0; // skipped past the end: start again from the oldest
    return loadQueue();
  }
  $("queue-count").textContent = page.total
    ? `${page.total} unrated repl${page.total === 1 ? "y" : "ies"}, oldest first.`
    : "No unrated replies left. The queue is clear.";
  const item = page.items[0];
  state.queue = item || null;
  $("queue-item").hidden = !item;
  if (!item) {
    $("queue-item").dataset.id = "";
    return;
  }
  $("queue-prompt").textContent = item.prompt;
  $("queue-text").textContent = item.reply || "(empty reply)";
  $("queue-version").textContent = item.model_version;
  $("queue-when").textContent = item.created_at;
  $("queue-id").textContent = item.id;
  $("queue-item").dataset.id = item.id;
  $("queue-comment").value = "";
  markStars("queue-stars", 0);
  $("queue-item").focus();
}

$("queue-load").addEventListener("click", () => guarded(loadQueue));
$("queue-skip").addEventListener("click", () =>
  guarded(async () => {
    state.queueOffset += 1;
    await loadQueue();
  }),
);

buildStars("queue-stars", async (n) => {
  if (!state.queue) throw new ApiError("Load the queue first.");
  const result = await sendRating(state.queue.id, n, "queue-comment");
  showStatus(result.duplicate ? `Rating ${n} was already saved.` : `Rating ${n} saved.`);
  await loadQueue();
});

// -- keys: 1..5 rate, a / b / t choose (not while typing in a field) --------------------------------------------

document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (tag === "input" || tag === "textarea" || event.ctrlKey || event.metaKey || event.altKey) return;
  if (/^[1-5]$/.test(event.key)) {
    const stars = state.panel === "chat" ? "chat-stars" : state.panel === "queue" ? "queue-stars" : null;
    const ready = state.panel === "chat" ? state.chat : state.queue;
    if (stars && ready) {
      event.preventDefault();
      $(stars).querySelector(`button[data-rating="${event.key}"]`).click();
    }
  } else if (state.panel === "compare" && state.compare && !state.compare.done) {
    const which = { a: "a", b: "b", t: "tie" }[event.key.toLowerCase()];
    if (which) {
      event.preventDefault();
      guarded(() => choose(which));
    }
  }
});

refreshTokenState();
