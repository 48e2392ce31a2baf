// "Copy as code": the request in the form as a program for the official clients, pointed at this
// server (the same set-up as the README's quick start). The key is never written into the code.

import { ROOT } from "./api.js";

const HTTPS_NOTE = "The official clients speak HTTPS only: start the server with TLS (see docs/tls.md).";

/** A JSON value as a Python literal. */
function py(value, indent = 0) {
  const pad = "    ".repeat(indent + 1);
  const end = "    ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => pad + py(v, indent + 1)).join(",\n")},\n${end}]`;
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    return `{\n${entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${py(v, indent + 1)}`).join(",\n")},\n${end}}`;
  }
  return JSON.stringify(value); // strings and numbers: JSON's escapes are valid Python
}

/** A JSON value as a JavaScript object literal (identifier keys unquoted). */
function js(value, indent = 0) {
  const pad = "  ".repeat(indent + 1);
  const end = "  ".repeat(indent);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => pad + js(v, indent + 1)).join(",\n")},\n${end}]`;
  }
  if (value && typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    const key = (k) => (/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k));
    return `{\n${entries.map(([k, v]) => `${pad}${key(k)}: ${js(v, indent + 1)}`).join(",\n")},\n${end}}`;
  }
  return JSON.stringify(value ?? null);
}

export function pythonCode(endpointId, input) {
  const host = `${location.host}${ROOT}`;
  return [
    "# pip install fal-client",
    location.protocol === "https:" ? null : `# ${HTTPS_NOTE}`,
    "# In the environment (read when fal_client is imported), with your key:",
    "#   export FAL_KEY=KEY_ID:SECRET",
    `#   export FAL_RUN_HOST=${host}/run FAL_QUEUE_RUN_HOST=${host}/queue`,
    "#   export SSL_CERT_FILE=/path/to/ca.pem   # if the server's certificate comes from a local CA",
    "import fal_client",
    "",
    "result = fal_client.subscribe(",
    `    ${JSON.stringify(endpointId)},`,
    `    arguments=${py(input, 1)},`,
    "    with_logs=True,",
    "    on_queue_update=print,",
    ")",
    'print(result["video"]["url"])',
    "",
  ].filter((line) => line !== null).join("\n");
}

export function jsCode(endpointId, input) {
  const base = `${location.origin}${ROOT}`;
  return [
    "// npm install @fal-ai/client   (Node >= 20; run as node demo.mjs with FAL_KEY=KEY_ID:SECRET,",
    "// and NODE_EXTRA_CA_CERTS=/path/to/ca.pem if the certificate comes from a local CA)",
    location.protocol === "https:" ? null : `// ${HTTPS_NOTE}`,
    'import { createFalClient } from "@fal-ai/client";',
    "",
    `const B = ${JSON.stringify(base)};`,
    "const rewrite = (u) => String(u)",
    "  .replace(/^https:\\/\\/queue\\.fal\\.run\\//, `${B}/queue/`)",
    "  .replace(/^https:\\/\\/fal\\.run\\//, `${B}/run/`)",
    "  .replace(/^https:\\/\\/rest\\.fal\\.ai\\//, `${B}/rest/`);",
    "const fal = createFalClient({ credentials: process.env.FAL_KEY, fetch: (u, i) => fetch(rewrite(u), i) });",
    "",
    `const { data, requestId } = await fal.subscribe(${JSON.stringify(endpointId)}, {`,
    `  input: ${js(input, 1)},`,
    "  logs: true,",
    "  onQueueUpdate: (update) => console.log(update.status),",
    "});",
    "console.log(requestId, data.video.url);",
    "",
  ].filter((line) => line !== null).join("\n");
}
