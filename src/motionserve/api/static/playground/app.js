// The playground page: endpoints, the key, the form, a run followed live over the status stream,
// its result, and the key's history. Talks only to this server's public API (see api.js).

import { ApiError, ROOT, api, getKey, setKey, statusStream } from "./api.js";
import { jsCode, pythonCode } from "./code.js";
import { SchemaForm } from "./form.js";

const $ = (id) => document.getElementById(id);
const STEP_LINE = /\bstep (\d+)\s*\/\s*(\d+)/i;

const state = {
  endpoints: [],
  endpoint: null, // {endpoint_id, title, description, openapi}
  form: null,
  lang: "python",
  run: null, // {id, endpointId, statusUrl, responseUrl, cancelUrl, startedAt, abort, timer}
};

// ---------------------------------------------------------------- the key

function showKeyState(text, ok) {
  const node = $("key-state");
  node.textContent = text;
  node.className = ok === undefined ? "muted" : ok ? "ok" : "error";
}

async function checkKey() {
  if (!getKey()) {
    $("key-input").placeholder = "KEY_ID:SECRET";
    showKeyState("no key: runs and history need one");
    return false;
  }
  $("key-input").placeholder = `saved (…${getKey().slice(-4)})`;
  try {
    await api("/requests?limit=1");
    showKeyState("key OK", true);
    return true;
  } catch (err) {
    showKeyState(err.status === 401 ? "this key is not valid here" : `cannot check the key: ${err.message}`, false);
    return false;
  }
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  setKey(key);
  $("key-input").value = "";
  if (await checkKey()) refreshHistory();
});

$("key-forget").addEventListener("click", () => {
  setKey("");
  checkKey();
  $("history").replaceChildren();
});

// ---------------------------------------------------------------- endpoints and routing

function endpointFromPath() {
  const path = decodeURIComponent(location.pathname.slice(ROOT.length));
  return path.startsWith("/playground/") ? path.slice("/playground/".length).replace(/\/+$/, "") : null;
}

async function loadEndpoints() {
  state.endpoints = await api("/endpoints", { withKey: false });
  $("endpoints").replaceChildren(...state.endpoints.map((e) => {
    const link = document.createElement("a");
    link.href = `${ROOT}/playground/${e.endpoint_id}`;
    link.dataset.endpoint = e.endpoint_id;
    link.innerHTML = "<strong></strong><small></small>";
    link.querySelector("strong").textContent = e.title;
    link.querySelector("small").textContent = e.endpoint_id;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      history.pushState(null, "", link.href);
      route();
    });
    const item = document.createElement("li");
    item.append(link);
    return item;
  }));
}

async function route() {
  const id = endpointFromPath();
  for (const link of document.querySelectorAll("#endpoints a")) link.classList.toggle("active", link.dataset.endpoint === id);
  if (!id) {
    $("intro").hidden = false;
    $("endpoint").hidden = true;
    return;
  }
  const endpoint = state.endpoints.find((e) => e.endpoint_id === id);
  $("intro").hidden = Boolean(endpoint);
  $("endpoint").hidden = !endpoint;
  if (!endpoint) {
    $("intro").querySelector("h1").textContent = `No endpoint "${id}" on this server`;
    return;
  }
  if (state.endpoint?.endpoint_id !== id) await showEndpoint(endpoint);
}

async function showEndpoint(endpoint) {
  state.endpoint = endpoint;
  $("ep-title").textContent = endpoint.title;
  $("ep-id").textContent = endpoint.endpoint_id;
  $("ep-desc").textContent = endpoint.description;
  const schemaUrl = `${ROOT}/openapi/${endpoint.endpoint_id}.json`;
  $("ep-schema").href = schemaUrl;
  const doc = await api(`/openapi/${endpoint.endpoint_id}.json`, { withKey: false });
  state.form = new SchemaForm($("fields"), doc);
  state.form.onChange(renderCode);
  $("form-error").textContent = "";
  document.title = `${endpoint.title} · motionserve playground`;
  renderCode();
}

window.addEventListener("popstate", route);

// ---------------------------------------------------------------- copy as code

function renderCode() {
  if (!state.endpoint || !state.form) return;
  const input = state.form.values();
  const make = state.lang === "python" ? pythonCode : jsCode;
  $("code-text").textContent = make(state.endpoint.endpoint_id, input);
}

for (const tab of document.querySelectorAll("#code [role=tab]")) {
  tab.addEventListener("click", () => {
    state.lang = tab.dataset.lang;
    for (const t of document.querySelectorAll("#code [role=tab]")) t.setAttribute("aria-selected", String(t === tab));
    renderCode();
  });
}

$("copy").addEventListener("click", async () => {
  const text = $("code-text").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (plain http on another host): select it for Ctrl-C instead.
    getSelection().selectAllChildren($("code-text"));
  }
  $("copy").textContent = "Copied";
  setTimeout(() => ($("copy").textContent = "Copy"), 1500);
});

// ---------------------------------------------------------------- submitting

$("reset").addEventListener("click", () => state.form?.reset());

$("input-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  await submit();
});

async function submit() {
  const form = state.form;
  const endpoint = state.endpoint;
  $("form-error").textContent = "";
  if (!getKey()) {
    $("form-error").textContent = "Save an API key first (top of the page).";
    $("key-input").focus();
    return;
  }
  $("submit").disabled = true;
  try {
    await form.settled(); // a file still uploading
    const input = form.values();
    form.clearErrors();
    const queued = await api(`/queue/${endpoint.endpoint_id}`, { method: "POST", body: input });
    follow({
      id: queued.request_id,
      endpointId: endpoint.endpoint_id,
      statusUrl: queued.status_url,
      responseUrl: queued.response_url,
      cancelUrl: queued.cancel_url,
      startedAt: Date.now(),
      queuePosition: queued.queue_position,
    });
    refreshHistory();
  } catch (err) {
    showSubmitError(err);
  } finally {
    $("submit").disabled = false;
  }
}

function showSubmitError(err) {
  if (err instanceof ApiError && err.fieldErrors.length) {
    const unplaced = state.form.showErrors(err.fieldErrors);
    $("form-error").textContent = unplaced.length
      ? unplaced.map((e) => `${(e.loc ?? []).join(".")}: ${e.msg}`).join("; ")
      : "Some values are not accepted: see the fields marked in red.";
  } else if (err instanceof ApiError && err.status === 401) {
    $("form-error").textContent = "The server refused the key (401): save a valid one at the top of the page.";
    checkKey();
  } else {
    $("form-error").textContent = err.message;
  }
}

// ---------------------------------------------------------------- following a run

function resetRunView(run) {
  $("run").hidden = false;
  $("run").dataset.state = "queued";
  $("run-id").textContent = run.id;
  $("run-status").textContent = "IN_QUEUE";
  $("run-status").className = "badge";
  $("run-position").textContent = run.queuePosition !== undefined ? `queue position ${run.queuePosition}` : "";
  $("run-elapsed").textContent = "";
  $("run-progress").value = 0;
  $("run-progress").removeAttribute("data-total");
  $("run-step").textContent = "";
  $("preview-box").hidden = true;
  $("preview").removeAttribute("src");
  $("run-error").textContent = "";
  $("result").hidden = true;
  $("result-video").removeAttribute("src");
  $("result-meta").replaceChildren();
  $("logs").textContent = "";
  $("cancel").hidden = false;
  $("cancel").disabled = false;
}

function stopFollowing() {
  if (!state.run) return;
  state.run.abort.abort();
  clearInterval(state.run.timer);
  state.run = null;
}

async function follow(run) {
  stopFollowing();
  run.abort = new AbortController();
  run.timer = setInterval(() => tick(run), 100);
  state.run = run;
  resetRunView(run);
  $("run").scrollIntoView({ block: "start", behavior: "smooth" });
  try {
    for await (const status of statusStream(run.statusUrl, run.abort.signal)) {
      if (state.run !== run) return;
      showStatus(run, status);
      if (status.status === "COMPLETED") await showOutcome(run, status);
    }
  } catch (err) {
    if (!run.abort.signal.aborted) $("run-error").textContent = `Lost the request's status: ${err.message}`;
  }
}

function tick(run) {
  const end = run.finishedAt ?? Date.now();
  $("run-elapsed").textContent = `${((end - run.startedAt) / 1000).toFixed(1)} s`;
}

function showStatus(run, status) {
  if (status.status === "RECONNECTING") {
    $("logs").textContent = ""; // the new stream sends every line again
    return;
  }
  $("run-status").textContent = status.status;
  if (status.status === "IN_QUEUE") {
    $("run").dataset.state = "queued";
    $("run-position").textContent = `queue position ${status.queue_position ?? 0}`;
  } else {
    $("run-position").textContent = "";
  }
  if (status.status === "IN_PROGRESS") $("run").dataset.state = "running";
  for (const line of status.logs ?? []) {
    $("logs").textContent += `${line.timestamp?.slice(11, 19) ?? ""} ${line.message}\n`;
    const step = STEP_LINE.exec(line.message);
    if (step) showStep(Number(step[1]), Number(step[2]));
  }
  $("logs").scrollTop = $("logs").scrollHeight;
  if (status.preview?.url) showPreview(status.preview);
}

function showStep(k, n) {
  const bar = $("run-progress");
  bar.max = n;
  bar.value = k;
  $("run-step").textContent = `step ${k} / ${n}`;
}

function showPreview(preview) {
  const img = $("preview");
  if (img.getAttribute("src") !== preview.url) img.src = preview.url; // an animated image (a few frames)
  img.dataset.step = preview.step;
  $("preview-step").textContent = `live preview after step ${preview.step}`;
  $("preview-box").hidden = false;
}

async function showOutcome(run, status) {
  run.finishedAt = run.finishedAt ?? Date.now();
  tick(run);
  $("cancel").hidden = true;
  $("preview-box").hidden = true;
  const timings = status.metrics?.inference_time;
  try {
    const result = await api(run.responseUrl);
    $("run").dataset.state = "succeeded";
    $("run-status").classList.add("ok");
    showResult(result, timings);
  } catch (err) {
    const cancelled = err.status === 499 || status.error_type === "client_cancelled";
    $("run").dataset.state = cancelled ? "cancelled" : "failed";
    $("run-status").classList.add(cancelled ? "warn" : "bad");
    $("run-status").textContent = cancelled ? "CANCELLED" : "FAILED";
    if (err instanceof ApiError && err.fieldErrors.length && state.form && state.endpoint?.endpoint_id === run.endpointId) {
      state.form.showErrors(err.fieldErrors);
    }
    $("run-error").textContent = status.error || err.message;
  }
  refreshHistory();
}

function showResult(result, inferenceTime) {
  const video = result.video;
  $("result").hidden = false;
  if (video?.url) {
    $("result-video").src = video.url;
    $("download").href = video.url;
    $("download").setAttribute("download", video.file_name || "output.mp4");
  }
  const rows = [];
  if (result.seed !== undefined) rows.push(["seed", String(result.seed)]);
  if (inferenceTime !== undefined) rows.push(["inference time", `${inferenceTime.toFixed(2)} s`]);
  for (const [stage, seconds] of Object.entries(result.timings ?? {})) rows.push([`timings.${stage}`, `${Number(seconds).toFixed(2)} s`]);
  if (video?.file_size) rows.push(["file", `${video.file_name ?? ""} · ${video.content_type ?? ""} · ${video.file_size} bytes`]);
  $("result-meta").replaceChildren(...rows.flatMap(([name, value]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    dd.dataset.name = name;
    return [dt, dd];
  }));
  $("result-json").textContent = JSON.stringify(result, null, 2);
}

$("cancel").addEventListener("click", async () => {
  const run = state.run;
  if (!run) return;
  $("cancel").disabled = true;
  try {
    await api(run.cancelUrl, { method: "PUT" });
    $("run-step").textContent = "cancelling…";
  } catch (err) {
    // 400: it finished meanwhile; the stream shows how.
    if (err.status !== 400) $("run-error").textContent = `Cancel failed: ${err.message}`;
  }
});

// ---------------------------------------------------------------- history

async function refreshHistory() {
  if (!getKey()) return;
  let listed;
  try {
    listed = await api("/requests?limit=30");
  } catch {
    return; // the key check says why
  }
  $("history").replaceChildren(...listed.requests.map(historyItem));
}

function historyItem(entry) {
  const item = document.createElement("li");
  item.className = "history-item";
  item.dataset.requestId = entry.request_id;
  item.dataset.state = entry.state;
  const title = state.endpoints.find((e) => e.endpoint_id === entry.endpoint_id)?.title ?? entry.endpoint_id;
  const when = new Date(entry.created_at).toLocaleTimeString();
  const summary = entry.input?.prompt ?? entry.input?.image_url ?? entry.input?.video_url ?? "";
  item.innerHTML = `<div><span class="badge"></span> <strong></strong> <small class="muted"></small></div>
    <div class="muted ellipsis"></div>
    <div class="history-actions"><button type="button" class="secondary open">Open</button>
    <button type="button" class="secondary rerun">Re-run</button></div>`;
  item.querySelector(".badge").textContent = entry.state;
  item.querySelector(".badge").classList.add({ succeeded: "ok", failed: "bad", cancelled: "warn" }[entry.state] ?? "live");
  item.querySelector("strong").textContent = title;
  item.querySelector("small").textContent = when;
  item.querySelector(".ellipsis").textContent = entry.error ? `${summary} — ${entry.error}` : summary;
  item.querySelector(".open").addEventListener("click", () => openEntry(entry, false));
  item.querySelector(".rerun").addEventListener("click", () => openEntry(entry, true));
  return item;
}

async function openEntry(entry, rerun) {
  const endpoint = state.endpoints.find((e) => e.endpoint_id === entry.endpoint_id);
  if (!endpoint) return;
  history.pushState(null, "", `${ROOT}/playground/${endpoint.endpoint_id}`);
  await route();
  state.form.setValues(entry.input);
  if (entry.omitted?.length) {
    $("form-error").textContent = `Too large to list, choose again: ${entry.omitted.join(", ")}`;
    if (rerun) return;
  }
  if (rerun) {
    await submit();
    return;
  }
  follow({
    id: entry.request_id,
    endpointId: entry.endpoint_id,
    statusUrl: entry.status_url,
    responseUrl: entry.response_url,
    cancelUrl: entry.cancel_url,
    startedAt: Date.parse(entry.created_at),
    finishedAt: entry.finished_at ? Date.parse(entry.finished_at) : undefined,
  });
}

$("history-refresh").addEventListener("click", refreshHistory);

// ---------------------------------------------------------------- start

async function start() {
  try {
    await loadEndpoints();
  } catch (err) {
    $("intro").querySelector("h1").textContent = `Cannot list the endpoints: ${err.message}`;
    return;
  }
  await route();
  if (await checkKey()) await refreshHistory();
  document.body.dataset.ready = "1";
}

start();
