// Drives a motionserve with the official @fal-ai/client, one scenario per process.
//
// The JS client hard-codes https://fal.run, https://queue.fal.run and https://rest.fal.ai; a custom
// `fetch` rewrites them onto the test server (fal-protocol.md §4.2). TLS trust comes from
// NODE_EXTRA_CA_CERTS, the key from FAL_KEY, the server from MOTIONSERVE_E2E_BASE.
//
// Usage: node driver.cjs SCENARIO '{"json": "arguments"}'. The last stdout line is a JSON result.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const { createFalClient, ApiError, ValidationError } = require("@fal-ai/client");

const BASE = process.env.MOTIONSERVE_E2E_BASE;
const DEADLINE_MS = Number(process.env.MOTIONSERVE_E2E_JOB_TIMEOUT_S || "300") * 1000;

const rewrite = (u) =>
  String(u)
    .replace(/^https:\/\/queue\.fal\.run\//, `${BASE}/queue/`)
    .replace(/^https:\/\/fal\.run\//, `${BASE}/run/`)
    .replace(/^https:\/\/rest\.fal\.ai\//, `${BASE}/rest/`)
    .replace(/^https:\/\/rest\.alpha\.fal\.ai\//, `${BASE}/rest/`);

const fal = createFalClient({
  credentials: process.env.FAL_KEY,
  fetch: (u, init) => fetch(rewrite(u), init),
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function errorInfo(err) {
  if (err instanceof ApiError) {
    const out = { name: err.name, status: err.status, body: err.body ?? null, message: err.message };
    if (err instanceof ValidationError) out.fieldErrors = err.fieldErrors;
    return out;
  }
  throw err; // anything else is a driver or client bug: let the test see the stack
}

async function resultOrError(fetchIt) {
  try {
    const r = await fetchIt();
    return { result: r.data, requestId: r.requestId };
  } catch (err) {
    return { error: errorInfo(err) };
  }
}

function summarise(update) {
  const out = { status: update.status };
  if ("queue_position" in update) out.position = update.queue_position;
  if ("logs" in update) out.logs = update.logs;
  if (update.status === "COMPLETED") {
    out.error = update.error ?? null;
    out.error_type = update.error_type ?? null;
  }
  return out;
}

// A "step i/n" line of the denoising loop (other lines, e.g. the plan, come before any work).
const STEP_LINE = /\bstep \d+\/\d+/i;
const hasStepLine = (logs) => (logs || []).some((l) => STEP_LINE.test(l.message));

// Poll until `wanted` (with a step line, if `needLogs`) or COMPLETED; returns every status seen.
async function waitFor(endpoint, requestId, wanted, logs = false, needLogs = false) {
  const seen = [];
  const deadline = Date.now() + DEADLINE_MS;
  while (Date.now() < deadline) {
    const s = await fal.queue.status(endpoint, { requestId, logs: logs || needLogs });
    seen.push(summarise(s));
    if (s.status === "COMPLETED") return seen;
    if (s.status === wanted && !(needLogs && !hasStepLine(s.logs))) return seen;
    await sleep(100);
  }
  throw new Error(`no ${wanted} within ${DEADLINE_MS} ms; saw ${JSON.stringify(seen.slice(-3))}`);
}

function fileBlob({ file_path, content_type }) {
  const data = fs.readFileSync(file_path);
  return new File([data], path.basename(file_path), { type: content_type });
}

const scenarios = {
  async run({ endpoint, input }) {
    return resultOrError(() => fal.run(endpoint, { input }));
  },

  async subscribe({ endpoint, input, mode = "polling" }) {
    const updates = [];
    let enqueued = null;
    const out = await resultOrError(() =>
      fal.subscribe(endpoint, {
        input,
        logs: true,
        mode,
        pollInterval: 100,
        onEnqueue: (id) => (enqueued = id),
        onQueueUpdate: (u) => updates.push(summarise(u)),
      }),
    );
    return { ...out, updates, enqueued };
  },

  async submit({ endpoint, input, webhook_url }) {
    const { request_id: requestId } = await fal.queue.submit(endpoint, { input, webhookUrl: webhook_url });
    const statuses = await waitFor(endpoint, requestId, "COMPLETED", true);
    const out = await resultOrError(() => fal.queue.result(endpoint, { requestId }));
    const quiet = await fal.queue.status(endpoint, { requestId, logs: false });
    return { ...out, request_id: requestId, statuses, status_without_logs: summarise(quiet) };
  },

  async stream_status({ endpoint, input }) {
    const { request_id: requestId } = await fal.queue.submit(endpoint, { input });
    const stream = await fal.queue.streamStatus(endpoint, { requestId, logs: true });
    const events = [];
    stream.on("data", (d) => events.push(summarise(d)));
    const last = await stream.done();
    const out = await resultOrError(() => fal.queue.result(endpoint, { requestId }));
    return { ...out, request_id: requestId, events, last: summarise(last) };
  },

  async cancel({ endpoint, long_input }) {
    // Cancel the running one only after reading its first step lines while it runs.
    const { request_id: runningId } = await fal.queue.submit(endpoint, { input: long_input });
    await waitFor(endpoint, runningId, "IN_PROGRESS", true, true);
    const { request_id: queuedId } = await fal.queue.submit(endpoint, { input: long_input });
    const queuedBefore = summarise(await fal.queue.status(endpoint, { requestId: queuedId }));
    await fal.queue.cancel(endpoint, { requestId: queuedId });
    const queuedAfter = (await waitFor(endpoint, queuedId, "COMPLETED", true)).at(-1);
    const runningBefore = summarise(await fal.queue.status(endpoint, { requestId: runningId, logs: true }));
    await fal.queue.cancel(endpoint, { requestId: runningId });
    const runningAfter = (await waitFor(endpoint, runningId, "COMPLETED", true)).at(-1);
    return {
      queued: { before: queuedBefore, after: queuedAfter, ...(await resultOrError(() => fal.queue.result(endpoint, { requestId: queuedId }))) },
      running: { before: runningBefore, after: runningAfter, ...(await resultOrError(() => fal.queue.result(endpoint, { requestId: runningId }))) },
    };
  },

  async upload({ size, content_type = "application/octet-stream", file_name = "upload.bin" }) {
    const data = crypto.randomBytes(size);
    const url = await fal.storage.upload(new File([data], file_name, { type: content_type }));
    return { url, sha256: crypto.createHash("sha256").update(data).digest("hex"), size };
  },

  // @fal-ai/client uploads Blob/File inputs by itself (storage.transformInput) before submitting.
  async run_with_blob({ endpoint, input, field, file_path, content_type }) {
    return resultOrError(() => fal.subscribe(endpoint, { input: { ...input, [field]: fileBlob({ file_path, content_type }) } }));
  },

  // Data URIs pass through the JS client unchanged; the server must decode them.
  async run_with_data_uri({ endpoint, input, field, file_path, content_type }) {
    const uri = `data:${content_type};base64,${fs.readFileSync(file_path).toString("base64")}`;
    return resultOrError(() => fal.run(endpoint, { input: { ...input, [field]: uri } }));
  },
};

async function main() {
  const [name, raw] = process.argv.slice(2);
  const fn = scenarios[name];
  if (!fn) throw new Error(`unknown scenario ${name}`);
  const out = await fn(raw ? JSON.parse(raw) : {});
  process.stdout.write("\n" + JSON.stringify(out) + "\n");
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
