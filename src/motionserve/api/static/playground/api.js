// The server's public API as the playground uses it: the key, JSON requests, the SSE status stream,
// and uploads through the storage API (the @fal-ai/client flow: initiate, then PUT the bytes).

export const ROOT = document.querySelector('meta[name="motionserve-root"]')?.content ?? "";
const KEY_STORAGE = "motionserve.apiKey";

export const getKey = () => localStorage.getItem(KEY_STORAGE) || "";
export const setKey = (key) => (key ? localStorage.setItem(KEY_STORAGE, key) : localStorage.removeItem(KEY_STORAGE));

export class ApiError extends Error {
  constructor(status, body) {
    super(errorText(status, body));
    this.status = status;
    this.body = body;
  }

  /** fal's validation entries ({loc, msg, type}), when the body carries them. */
  get fieldErrors() {
    return Array.isArray(this.body?.detail) ? this.body.detail : [];
  }
}

function errorText(status, body) {
  const detail = body?.detail;
  if (typeof detail === "string") return `${status}: ${detail}`;
  if (Array.isArray(detail)) return `${status}: ${detail.map((d) => d.msg).join("; ")}`;
  return `HTTP ${status}`;
}

/** The same path on this page's origin: queue and upload URLs come back absolute, built on how the
 * server saw the request, which a proxy may have changed; the page's own origin always works. */
export function local(url) {
  const u = new URL(url, location.href);
  return u.pathname + u.search;
}

function headers(extra = {}, withKey = true) {
  const key = getKey();
  return withKey && key ? { Authorization: `Key ${key}`, ...extra } : extra;
}

async function readBody(response) {
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return { detail: text };
  }
}

/** A JSON request to this server, with the key. `path` is relative to the app root or absolute. */
export async function api(path, { method = "GET", body, signal, withKey = true } = {}) {
  const url = path.startsWith("/") ? ROOT + path : local(path);
  const init = { method, signal, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }, withKey) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(url, init);
  const data = await readBody(response);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Upload a File through the storage API; resolves to its URL on this server. */
export async function upload(file) {
  const target = await api("/rest/storage/upload/initiate", {
    method: "POST",
    body: { content_type: file.type || "application/octet-stream", file_name: file.name },
  });
  // The upload URL itself is the credential (what the JS client does): no key on the PUT.
  const response = await fetch(local(target.upload_url), {
    method: "PUT",
    body: file,
    headers: { "Content-Type": file.type || "application/octet-stream" },
  });
  if (!response.ok) throw new ApiError(response.status, await readBody(response));
  return target.file_url;
}

/** Yield every status of a request from its SSE stream until COMPLETED. EventSource cannot send
 * the Authorization header, so the stream is read with fetch. A dropped stream is opened again. */
export async function* statusStream(statusUrl, signal) {
  let failures = 0;
  for (;;) {
    let response;
    try {
      response = await fetch(`${local(statusUrl)}/stream?logs=1`, { headers: headers({ Accept: "text/event-stream" }), signal });
    } catch (err) {
      if (signal?.aborted || ++failures > 5) throw err;
      await sleep(1000 * failures);
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await readBody(response));
    let last = null;
    for await (const status of sseData(response.body, signal)) {
      failures = 0;
      last = status;
      yield status;
      if (status.status === "COMPLETED") return;
    }
    if (signal?.aborted) return;
    // Ended without COMPLETED (a proxy or a restarting node cut it): the new stream resends the
    // logs from the start, which the caller replaces rather than appends.
    if (++failures > 5) throw new Error(`the status stream keeps closing (last: ${last?.status ?? "none"})`);
    await sleep(500 * failures);
    yield { status: "RECONNECTING" };
  }
}

async function* sseData(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield JSON.parse(data); // comment lines (": keepalive") carry no data
      }
    }
  } finally {
    if (!signal?.aborted) reader.cancel().catch(() => {});
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
