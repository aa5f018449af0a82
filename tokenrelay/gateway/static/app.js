// tokenrelay chat page. One control WebSocket to the gateway (start, stop, feedback) and one
// EventSource per stream to the streamer (the tokens). Plain JavaScript, no build step; answers are
// rendered as sanitized markdown by markdown.js, and the conversation survives a reload through memory.js.
"use strict";

(() => {
  // Delay before the n-th consecutive resume attempt; the last one repeats.
  const RESUME_BACKOFF_MS = [100, 250, 500, 1000, 2000];
  // Consecutive resume attempts without a single event in between before the page gives up.
  const MAX_RESUME_ATTEMPTS = 10;
  // Reader-level `error` events that a resume cures: the streamer is going away ("resume elsewhere"),
  // or it dropped this reader for reading too slowly. Other codes end the stream itself.
  const RESUMABLE_CODES = new Set(["shutting_down", "slow_consumer"]);
  // States in which a stream is still producing text (Start is disabled, Stop enabled).
  const ACTIVE_STATES = new Set(["connecting", "streaming", "reconnecting", "stopping"]);
  // States after which a turn joins the conversation sent with the next message (a stopped answer counts as said).
  const KEPT_STATES = new Set(["finished", "stopped"]);
  // States that end a turn: the state line a reloaded page shows again when no answer is in flight.
  const ENDED_STATES = new Set(["finished", "stopped", "error"]);
  // The streamer's public URL, filled in by the gateway as it serves the page (empty: learnt from the first stream).
  const STREAMER_META = document.querySelector('meta[name="tokenrelay-streamer-url"]');

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("prompt-form"), prompt: $("prompt"), maxTokens: $("max-tokens"), start: $("start"), stop: $("stop"),
    state: $("state"), output: $("output"), notice: $("notice"), ttft: $("ttft"), tokens: $("tokens"),
    tps: $("tps"), up: $("thumb-up"), down: $("thumb-down"), feedback: $("feedback-status"), apiKey: $("api-key"),
    conversation: $("conversation"), model: $("model"), newChat: $("new-chat"),
  };
  const markdown = window.tokenrelayMarkdown;
  const memory = window.tokenrelayMemory;

  class ControlError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  /** The control WebSocket: requests carry a `ref`, and the reply that echoes it settles their promise. */
  class Control {
    constructor(url) {
      this.url = url;
      this.opening = null;
      this.nextRef = 1;
      this.pending = new Map();
    }

    /**
     * The socket's URL. A browser cannot send the API key on a WebSocket, so with keys configured the page
     * trades the key (sent as a header on a same-origin POST) for a short-lived control token that goes in
     * the URL. Without keys the gateway answers a null token: the socket needs none.
     */
    async socketUrl() {
      const key = el.apiKey.value.trim();
      const response = await fetch("/v1/control/token", {
        method: "POST", headers: key ? { Authorization: `Bearer ${key}` } : {}, cache: "no-store",
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        const error = body.error || {};
        const hint = response.status === 401 ? " Enter a valid API key." : "";
        throw new ControlError(error.code || "control_error", `${error.message || response.statusText}.${hint}`);
      }
      return body.token ? `${this.url}?token=${encodeURIComponent(body.token)}` : this.url;
    }

    connect() {
      if (this.opening) return this.opening;
      const opening = this.socketUrl().then((url) => new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.addEventListener("open", () => resolve(ws));
        ws.addEventListener("message", (event) => this.receive(event.data));
        ws.addEventListener("close", () => {
          this.opening = null; // the next request opens a new socket
          reject(new ControlError("control_closed", "cannot reach the gateway's control socket"));
          this.failAll("the control socket closed before the gateway replied");
        });
      }));
      opening.catch(() => { if (this.opening === opening) this.opening = null; }); // retried on the next request
      this.opening = opening;
      return opening;
    }

    async request(message) {
      const ws = await this.connect();
      const ref = this.nextRef++;
      return new Promise((resolve, reject) => {
        this.pending.set(ref, { resolve, reject });
        ws.send(JSON.stringify({ ...message, ref }));
      });
    }

    receive(text) {
      let reply;
      try {
        reply = JSON.parse(text);
      } catch {
        return;
      }
      const waiter = this.pending.get(reply.ref);
      if (!waiter) return;
      this.pending.delete(reply.ref);
      if (reply.type === "error") waiter.reject(new ControlError(reply.code, reply.message));
      else waiter.resolve(reply);
    }

    failAll(message) {
      for (const waiter of this.pending.values()) waiter.reject(new ControlError("control_closed", message));
      this.pending.clear();
    }
  }

  const control = new Control(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/v1/control`);
  // What arrived but is not on screen yet is rendered once per animation frame, not once per token: each part
  // of the current turn that changed since the last frame is marked dirty and redrawn whole.
  const view = { frame: 0, turn: null, dirty: { answer: false, reasoning: false, tools: false } };
  // The conversation so far, as `messages` of the next request: the user's turns and the answers they got.
  const conversation = [];
  // The ended turns as shown (memory.streamRecord of each, with `failed`), kept so that a reload shows them again.
  const turns = [];
  let lastStatus = null; // the state line as last set: {name, detail, code}
  let streamerUrl = STREAMER_META ? STREAMER_META.content : "";
  let current = null; // the stream on screen; events of an older stream are ignored

  function newStream(startedAt, prompt) {
    return {
      id: null, eventsUrl: null, stopUrl: null, source: null, cursor: null, retryTimer: 0, attempts: 0, resumes: 0,
      tokens: 0, skipped: 0, startedAt, firstDeltaAt: null, firstDeltaTokens: 0, lastDeltaAt: null,
      stopping: false, terminal: false, restored: false, prompt, model: null, answer: "", reasoning: "",
      toolCalls: new Map(),
    };
  }

  // ---- view ----

  function setState(name, detail = "") {
    el.state.dataset.state = name;
    el.state.textContent = detail ? `${name} (${detail})` : name;
    lastStatus = { name, detail, code: el.state.dataset.code || null };
    const active = ACTIVE_STATES.has(name);
    el.start.disabled = active;
    el.stop.disabled = !active || Boolean(current && current.stopping);
    el.newChat.disabled = active;
    el.conversation.setAttribute("aria-busy", String(active));
    const rateable = Boolean(current && current.id);
    el.up.disabled = !rateable;
    el.down.disabled = !rateable;
  }

  function liveState(stream) {
    return stream.stopping ? "stopping" : "streaming";
  }

  function notice(message) {
    el.notice.textContent = message;
    el.notice.hidden = !message;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** A user's message and the assistant's turn that answers it, appended to the conversation. */
  function addTurn(prompt) {
    const user = element("article", "turn user");
    user.append(element("div", "bubble", prompt));
    const assistant = element("article", "turn assistant");
    const reasoning = element("details", "reasoning");
    reasoning.hidden = true;
    reasoning.append(element("summary", "", "Reasoning"), element("div", "reasoning-text"));
    const answer = element("div", "answer markdown");
    answer.dataset.testid = "answer";
    const tools = element("div", "tool-calls");
    tools.hidden = true;
    assistant.append(element("div", "who", "assistant"), reasoning, answer, tools);
    el.conversation.querySelector(".empty")?.remove();
    el.conversation.append(user, assistant);
    el.conversation.scrollTop = el.conversation.scrollHeight;
    return { assistant, reasoning, reasoningText: reasoning.lastChild, answer, tools };
  }

  function resetView(prompt) {
    cancelAnimationFrame(view.frame);
    view.frame = 0;
    view.dirty = { answer: false, reasoning: false, tools: false };
    view.turn = addTurn(prompt);
    el.ttft.textContent = "–";
    el.tokens.textContent = "0";
    el.tps.textContent = "–";
    el.feedback.textContent = "";
    el.feedback.dataset.state = "none";
    el.up.setAttribute("aria-pressed", "false");
    el.down.setAttribute("aria-pressed", "false");
    notice("");
  }

  function scheduleRender() {
    if (!view.frame) view.frame = requestAnimationFrame(render);
  }

  function render() {
    view.frame = 0;
    const stream = current;
    const turn = view.turn;
    if (stream && turn) {
      const box = el.conversation;
      const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
      if (view.dirty.reasoning) {
        turn.reasoning.hidden = false;
        turn.reasoningText.textContent = stream.reasoning;
      }
      // One replacement per frame: the whole answer parsed again, so markdown cut mid-way renders as it completes.
      if (view.dirty.answer) turn.answer.replaceChildren(markdown.render(stream.answer));
      if (view.dirty.tools) renderToolCalls(turn.tools, stream.toolCalls);
      view.dirty = { answer: false, reasoning: false, tools: false };
      if (atBottom) box.scrollTop = box.scrollHeight;
    }
    if (stream) renderStats(stream);
    persist(); // once a frame, like the view: what is saved is what is shown, with the cursor it goes up to
  }

  function renderToolCalls(container, calls) {
    container.hidden = calls.size === 0;
    container.replaceChildren(...[...calls.values()].map((call) => {
      const box = element("div", "tool-call");
      box.dataset.testid = "tool-call";
      const head = element("div", "tool-call-head", "Tool call ");
      head.append(element("code", "tool-name", call.name || "?"));
      if (call.id) head.append(" ", element("span", "tool-id", call.id));
      const pre = element("pre");
      pre.append(element("code", "tool-arguments", prettyJson(call.arguments)));
      box.append(head, pre);
      return box;
    }));
  }

  /** Arguments as JSON indented once they parse; as they stand while they are still arriving. */
  function prettyJson(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      return text;
    }
  }

  function renderNow() {
    cancelAnimationFrame(view.frame);
    render();
  }

  function renderStats(stream) {
    el.tokens.textContent = String(stream.tokens);
    // A stream resumed after a reload began on another page: its TTFT is not known here.
    if (stream.firstDeltaAt === null || stream.startedAt === null) return;
    el.ttft.textContent = `${Math.round(stream.firstDeltaAt - stream.startedAt)} ms`;
    const seconds = (stream.lastDeltaAt - stream.firstDeltaAt) / 1000;
    // Rate of the tokens after the first batch over the time they took; TTFT is shown on its own.
    if (seconds > 0) el.tps.textContent = ((stream.tokens - stream.firstDeltaTokens) / seconds).toFixed(1);
  }

  // ---- the model picker: the streamer's GET /v1/models ----

  async function loadModels() {
    if (!streamerUrl) return;
    const key = el.apiKey.value.trim();
    let names;
    try {
      const response = await fetch(`${streamerUrl.replace(/\/+$/, "")}/v1/models`, {
        headers: key ? { Authorization: `Bearer ${key}` } : {}, cache: "no-store",
      });
      if (!response.ok) return; // keep what the picker shows; the next request says what is wrong
      const body = await response.json();
      names = (body.data || []).map((model) => model.id).filter((id) => typeof id === "string");
    } catch {
      return; // the streamer is unreachable now; the picker keeps its last list
    }
    if (!names.length) return;
    const chosen = el.model.value;
    el.model.replaceChildren(...names.map((name) => new Option(name, name)));
    el.model.value = names.includes(chosen) ? chosen : names[0];
  }

  // ---- the data plane: one EventSource at a time, resumed by hand after a drop ----

  function withCursor(url, cursor) {
    const resumed = new URL(url);
    resumed.searchParams.set("last_event_id", cursor);
    return resumed.toString();
  }

  function open(stream) {
    // Resume by query parameter with a fresh EventSource: the browser's own retry sends a
    // Last-Event-ID header, which is not CORS-safelisted, and would retry even after errors.
    const source = new EventSource(stream.cursor ? withCursor(stream.eventsUrl, stream.cursor) : stream.eventsUrl);
    stream.source = source;
    source.addEventListener("open", () => stream === current && setState(liveState(stream)));
    source.addEventListener("start", (event) => onStart(stream, event));
    source.addEventListener("delta", (event) => onContent(stream, event, "answer"));
    source.addEventListener("reasoning", (event) => onContent(stream, event, "reasoning"));
    source.addEventListener("tool_call", (event) => onContent(stream, event, "tools"));
    source.addEventListener("stop", (event) => onStop(stream, event));
    source.addEventListener("error", (event) => onError(stream, source, event));
  }

  function closeSource(stream) {
    clearTimeout(stream.retryTimer);
    stream.retryTimer = 0;
    if (stream.source) stream.source.close();
    stream.source = null;
  }

  function onStart(stream, event) {
    if (stream !== current || stream.terminal) return;
    stream.attempts = 0;
    if (event.lastEventId) stream.cursor = event.lastEventId;
    const model = JSON.parse(event.data).model;
    if (model) stream.model = model;
    if (model && view.turn) view.turn.assistant.querySelector(".who").textContent = model;
  }

  /** A `delta`, `reasoning` or `tool_call` event: every one counts tokens on the stream's one `index`. */
  function onContent(stream, event, part) {
    if (stream !== current || stream.terminal) return;
    const data = JSON.parse(event.data);
    stream.attempts = 0;
    if (event.lastEventId) stream.cursor = event.lastEventId;
    if (data.index <= stream.tokens) {
      stream.skipped += 1; // already shown; the contract says a resume never repeats, so this counts a bug
      return;
    }
    const now = performance.now();
    if (stream.firstDeltaAt === null) {
      stream.firstDeltaAt = now;
      stream.firstDeltaTokens = data.index;
    }
    stream.lastDeltaAt = now;
    stream.tokens = data.index;
    if (part === "answer") stream.answer += data.text;
    else if (part === "reasoning") stream.reasoning += data.text;
    else addToolCallFragment(stream.toolCalls, data);
    view.dirty[part] = true;
    if (el.state.dataset.state !== liveState(stream)) setState(liveState(stream));
    scheduleRender();
  }

  function addToolCallFragment(calls, data) {
    // A call's id and name come on its first fragment; its arguments are the fragments joined in order.
    const call = calls.get(data.call) || { id: null, name: null, arguments: "" };
    if (data.id) call.id = data.id;
    if (data.name) call.name = data.name;
    call.arguments += data.arguments || "";
    calls.set(data.call, call);
  }

  function finish(stream) {
    stream.terminal = true;
    closeSource(stream); // a closed stream must not make EventSource reconnect
    renderNow();
  }

  function onStop(stream, event) {
    if (stream !== current || stream.terminal) return;
    const data = JSON.parse(event.data);
    finish(stream);
    const reason = data.finish_reason;
    const name = reason === "cancelled" ? "stopped" : reason === "error" ? "error" : "finished";
    if (KEPT_STATES.has(name)) keepTurn(stream);
    setState(name, `${reason}, ${data.tokens} tokens`);
    endTurn(stream, false);
  }

  /** The stream's turn has ended: it is kept as shown, so that a reload shows it again. */
  function endTurn(stream, failed) {
    turns.push({ ...memory.streamRecord(stream), failed });
    persist();
  }

  /** The turn joins the conversation: the next message is sent with it. */
  function keepTurn(stream) {
    conversation.push({ role: "user", content: stream.prompt });
    // Only the answer's text goes back: the page runs no tools, so there are no results to pair its calls with.
    if (stream.answer) conversation.push({ role: "assistant", content: stream.answer });
  }

  function onError(stream, source, event) {
    if (stream !== current || source !== stream.source || stream.terminal) return;
    if (!(event instanceof MessageEvent)) {
      dropped(stream); // the connection failed or closed before a terminal event
      return;
    }
    // An `event: error` sent by the streamer.
    let data = {};
    try {
      data = JSON.parse(event.data);
    } catch {
      data = { code: "bad_event", message: String(event.data) };
    }
    // Resume only after progress: a stream that itself ended with this code sends it again at once.
    if (RESUMABLE_CODES.has(data.code) && stream.attempts === 0) dropped(stream);
    else fail(stream, data.code, data.message);
  }

  function dropped(stream) {
    closeSource(stream);
    if (stream.attempts >= MAX_RESUME_ATTEMPTS) {
      fail(stream, "connection_lost", "the events connection keeps failing");
      return;
    }
    const delay = RESUME_BACKOFF_MS[Math.min(stream.attempts, RESUME_BACKOFF_MS.length - 1)];
    stream.attempts += 1;
    stream.resumes += 1;
    setState("reconnecting", `attempt ${stream.attempts}`);
    stream.retryTimer = setTimeout(() => {
      stream.retryTimer = 0;
      if (stream === current && !stream.terminal) open(stream);
    }, delay);
  }

  function fail(stream, code, message) {
    finish(stream);
    el.state.dataset.code = code;
    setState("error", code);
    notice(message || code);
    // The failed turn is not part of the conversation; its message goes back in the box to be sent again.
    if (view.turn) view.turn.assistant.classList.add("failed");
    if (!el.prompt.value.trim()) el.prompt.value = stream.prompt;
    endTurn(stream, true);
  }

  // ---- the control plane ----

  async function start(event) {
    event.preventDefault();
    const prompt = el.prompt.value;
    if (!prompt.trim()) return;
    if (current) closeSource(current);
    const stream = newStream(performance.now(), prompt);
    current = stream;
    resetView(prompt);
    el.prompt.value = "";
    delete el.state.dataset.code;
    setState("connecting");
    persist(); // a reload before the gateway answers finds the message unsent (see `restore`)
    const body = { type: "start", messages: [...conversation, { role: "user", content: prompt }] };
    if (Number.isFinite(el.maxTokens.valueAsNumber)) body.max_tokens = el.maxTokens.valueAsNumber;
    if (el.model.value) body.model = el.model.value;
    let reply;
    try {
      reply = await control.request(body);
    } catch (error) {
      if (stream === current) fail(stream, error.code || "control_error", error.message);
      return;
    }
    if (stream !== current) return;
    stream.id = reply.stream_id;
    stream.eventsUrl = reply.events_url;
    stream.stopUrl = reply.stop_url || null;
    view.turn.assistant.dataset.streamId = stream.id;
    persist();
    if (!streamerUrl) {
      streamerUrl = new URL(reply.events_url).origin; // a page served without the streamer's URL learns it here
      loadModels();
    }
    setState(stream.stopping ? "stopping" : "connecting");
    open(stream);
    if (stream.stopping) sendStop(stream);
  }

  function stop() {
    const stream = current;
    if (!stream || stream.terminal || stream.stopping) return;
    stream.stopping = true;
    setState("stopping");
    if (stream.id) sendStop(stream); // otherwise it is sent as soon as `started` arrives
  }

  async function sendStop(stream) {
    try {
      // An answer resumed after a reload is stopped by its stop URL, whose token needs no key: the page kept none.
      const reply = stream.restored && stream.stopUrl
        ? await stopByUrl(stream.stopUrl)
        : await control.request({ type: "stop", stream_id: stream.id });
      // Generation has halted; the tokens before the halt still arrive, then the terminal event.
      if (stream === current && !stream.terminal) setState("stopping", `halted at ${reply.tokens} tokens`);
    } catch (error) {
      if (stream !== current || stream.terminal) return;
      stream.stopping = false;
      setState(stream.retryTimer ? "reconnecting" : "streaming");
      notice(`Stop failed: ${error.code}: ${error.message}`);
    }
  }

  /** `POST stop_url`: the same halt as the control socket's `stop`, answered with `{id, finish_reason, tokens}`. */
  async function stopByUrl(url) {
    const response = await fetch(url, { method: "POST", cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = body.error || {};
      throw new ControlError(error.code || "stop_failed", error.message || response.statusText);
    }
    return body;
  }

  function newChat() {
    if (current && !current.terminal) return;
    current = null;
    view.turn = null;
    conversation.length = 0;
    turns.length = 0;
    memory.clear();
    const empty = element("p", "empty", "Ask something to start a conversation.");
    empty.dataset.testid = "empty";
    el.conversation.replaceChildren(empty);
    delete el.state.dataset.code;
    setState("idle");
    notice("");
    el.prompt.focus();
    loadModels();
  }

  async function rate(rating) {
    const stream = current;
    if (!stream || !stream.id) return;
    el.feedback.dataset.state = "sending";
    el.feedback.textContent = "Sending feedback…";
    try {
      await control.request({ type: "feedback", stream_id: stream.id, rating });
    } catch (error) {
      if (stream !== current) return;
      el.feedback.dataset.state = "error";
      el.feedback.textContent = `Feedback failed: ${error.code}`;
      return;
    }
    if (stream !== current) return;
    el.up.setAttribute("aria-pressed", String(rating === "up"));
    el.down.setAttribute("aria-pressed", String(rating === "down"));
    el.feedback.dataset.state = "ack";
    el.feedback.textContent = `Feedback saved (${rating === "up" ? "good" : "bad"}).`;
  }

  // ---- across a reload: the conversation and the answer in flight, kept in the tab's storage (memory.js) ----

  function persist() {
    const inflight = current && !current.terminal ? memory.streamRecord(current) : null;
    memory.save({ conversation, turns, inflight, status: inflight ? null : lastStatus });
  }

  /** A saved stream as a stream of this page: what it showed, and where to resume it. */
  function restoredStream(saved) {
    const stream = newStream(null, saved.prompt);
    for (const name of ["id", "eventsUrl", "stopUrl", "cursor", "tokens", "model", "answer", "reasoning"]) {
      if (saved[name] !== undefined) stream[name] = saved[name];
    }
    stream.toolCalls = new Map(saved.toolCalls || []);
    stream.restored = true;
    return stream;
  }

  /** Show a saved stream's turn whole, at once. */
  function showTurn(stream, failed) {
    current = stream;
    resetView(stream.prompt);
    if (stream.model) view.turn.assistant.querySelector(".who").textContent = stream.model;
    if (stream.id) view.turn.assistant.dataset.streamId = stream.id;
    if (failed) view.turn.assistant.classList.add("failed");
    view.dirty = { answer: true, reasoning: Boolean(stream.reasoning), tools: stream.toolCalls.size > 0 };
    renderNow();
  }

  /**
   * Show the saved conversation; an answer that was in flight continues from its cursor, with no gap and no
   * repeat (or ends at once: a stream that ended meanwhile replays its terminal event after the cursor).
   */
  function restore() {
    const saved = memory.load();
    if (!saved) return;
    conversation.push(...saved.conversation);
    for (const turn of saved.turns) {
      turns.push(turn); // before it is shown: showing it saves the state
      const stream = restoredStream(turn);
      stream.terminal = true;
      showTurn(stream, Boolean(turn.failed));
    }
    if (saved.inflight) {
      const stream = restoredStream(saved.inflight);
      showTurn(stream, false);
      if (!stream.id || !stream.eventsUrl) {
        fail(stream, "not_started", "The page was reloaded before the gateway started this answer: send it again.");
        return;
      }
      setState("connecting");
      open(stream);
    } else if (saved.status && ENDED_STATES.has(saved.status.name)) {
      if (saved.status.code) el.state.dataset.code = saved.status.code;
      setState(saved.status.name, saved.status.detail);
    }
    persist();
  }

  /** Open the control socket (with the key in the box, if any), then list the models that key may use. */
  function connect() {
    control.connect().then(loadModels, () => {}); // a failure shows on the next Send, with its reason
  }

  el.form.addEventListener("submit", start);
  el.stop.addEventListener("click", stop);
  el.newChat.addEventListener("click", newChat);
  el.up.addEventListener("click", () => rate("up"));
  el.down.addEventListener("click", () => rate("down"));
  el.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!el.start.disabled) el.form.requestSubmit();
    }
  });
  markdown.handleCopyClicks(el.conversation);
  restore();
  window.addEventListener("pagehide", persist); // the latest text and cursor, should no frame have saved them yet
  connect(); // open early so the first Send does not wait for the handshake
  el.apiKey.addEventListener("change", connect);

  /** For tests and debugging: simulate a network drop, read the stream's client-side state. */
  window.tokenrelayDebug = Object.freeze({
    dropConnection() {
      const stream = current;
      if (!stream || !stream.source || stream.terminal) return false;
      stream.source.dispatchEvent(new Event("error")); // what a failed connection fires
      return true;
    },
    snapshot() {
      const s = current;
      return s && {
        streamId: s.id, cursor: s.cursor, tokens: s.tokens, resumes: s.resumes, skipped: s.skipped,
        connected: Boolean(s.source && s.source.readyState === EventSource.OPEN), terminal: s.terminal,
        answer: s.answer, reasoning: s.reasoning, conversation: conversation.length,
      };
    },
  });
})();
