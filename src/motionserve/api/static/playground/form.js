// A form generated from an endpoint's OpenAPI input schema.
//
// Every field is a widget {path, element, get(), set(value), error(text)}; get() returns undefined
// for "not sent" (empty, or equal to the schema's default, so requests and code samples stay short).
// Kinds: enum -> select; enum | object (video_size) -> presets or custom; array of enums (motions) ->
// checkboxes; array of objects (loras) -> rows to add and remove; *_url -> a URL or a local file
// uploaded through the storage API; numbers with their range and default; prompts as text areas.

import { upload } from "./api.js";

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== undefined && c !== null));
  return node;
};

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** The input schema of an endpoint's OpenAPI document (the POST body of its submit path). */
export function inputSchema(doc) {
  const post = Object.values(doc.paths).find((p) => p.post?.requestBody)?.post;
  return resolve(doc, post.requestBody.content["application/json"].schema);
}

function resolve(doc, schema) {
  let s = schema;
  while (s?.$ref) s = doc.components.schemas[s.$ref.split("/").pop()];
  return s;
}

/** (schema without its null branch, whether null is allowed). */
function unwrapNullable(doc, schema) {
  const branches = schema.anyOf?.filter((b) => b.type !== "null");
  if (branches && branches.length < schema.anyOf.length) {
    const inner = branches.length === 1 ? resolve(doc, branches[0]) : { anyOf: branches };
    return [{ ...inner, description: schema.description ?? inner.description, default: schema.default, title: schema.title ?? inner.title }, true];
  }
  return [resolve(doc, schema), false];
}

export class SchemaForm {
  constructor(container, doc) {
    this.doc = doc;
    this.schema = inputSchema(doc);
    this.required = new Set(this.schema.required ?? []);
    this.container = container;
    this.uploads = new Set(); // pending upload promises
    this.listeners = [];
    container.replaceChildren();
    this.widgets = Object.entries(this.schema.properties).map(([name, prop]) => this.field(name, prop));
    container.addEventListener("input", () => this.changed());
    container.addEventListener("change", () => this.changed());
  }

  onChange(listener) {
    this.listeners.push(listener);
  }

  changed() {
    for (const listener of this.listeners) listener(this.values());
  }

  /** The request body: only the fields that are set and differ from their defaults. */
  values() {
    const body = {};
    for (const w of this.widgets) {
      const value = w.get();
      if (value !== undefined) body[w.path] = value;
    }
    return body;
  }

  setValues(input) {
    for (const w of this.widgets) w.set(input?.[w.path]);
    this.clearErrors();
    this.changed();
  }

  reset() {
    this.setValues({});
  }

  async settled() {
    await Promise.all([...this.uploads]);
  }

  clearErrors() {
    for (const node of this.container.querySelectorAll(".field-error")) node.textContent = "";
    for (const node of this.container.querySelectorAll(".invalid")) node.classList.remove("invalid");
  }

  /** Show fal's validation entries beside the fields they name; returns those no field took. */
  showErrors(detail) {
    this.clearErrors();
    const unplaced = [];
    for (const entry of detail) {
      const loc = (entry.loc ?? []).filter((part, i) => !(i === 0 && part === "body"));
      const field = this.fieldFor(loc);
      if (!field) {
        unplaced.push(entry);
        continue;
      }
      field.classList.add("invalid");
      const box = field.querySelector(":scope > .field-error");
      box.textContent = box.textContent ? `${box.textContent}; ${entry.msg}` : entry.msg;
    }
    this.container.querySelector(".invalid")?.scrollIntoView({ block: "center", behavior: "smooth" });
    return unplaced;
  }

  /** The deepest field element whose path is a prefix of `loc` (loras.0.path, then loras). */
  fieldFor(loc) {
    for (let n = loc.length; n > 0; n--) {
      const path = loc.slice(0, n).join(".");
      const found = [...this.container.querySelectorAll("[data-path]")].find((node) => node.dataset.path === path);
      if (found) return found;
    }
    return null;
  }

  // -- widgets -------------------------------------------------------------------------------

  field(path, rawSchema) {
    const [schema, nullable] = unwrapNullable(this.doc, rawSchema);
    const name = path.split(".").pop();
    let widget;
    if (schema.enum) widget = this.selectWidget(path, schema, nullable);
    else if (schema.anyOf) widget = this.presetOrCustomWidget(path, schema);
    else if (schema.type === "array" && resolve(this.doc, schema.items)?.enum) widget = this.checkboxesWidget(path, schema);
    else if (schema.type === "array") widget = this.rowsWidget(path, schema);
    else if (schema.type === "integer" || schema.type === "number") widget = this.numberWidget(path, schema);
    else if (schema.type === "boolean") widget = this.booleanWidget(path, schema);
    else if (schema.type === "object") widget = this.objectWidget(path);
    else if (name.endsWith("_url")) widget = this.fileOrUrlWidget(path, schema);
    else widget = this.textWidget(path, schema, name.includes("prompt"));
    const required = this.required.has(path);
    const label = el("label", { for: widget.id }, schema.title || name, required ? el("span", { class: "req", text: " *" }) : null);
    const hints = [schema.minimum !== undefined || schema.maximum !== undefined ? `${schema.minimum ?? "…"} – ${schema.maximum ?? "…"}` : null,
      schema.default !== undefined && schema.default !== null && !schema.enum && typeof schema.default !== "object" ? `default ${schema.default}` : null]
      .filter(Boolean).join(" · ");
    widget.element = el("div", { class: "field", "data-path": path, "data-kind": widget.kind },
      label, widget.control,
      el("p", { class: "help", text: [schema.description, hints && `(${hints})`].filter(Boolean).join(" ") }),
      el("p", { class: "field-error", role: "alert" }));
    this.container.append(widget.element);
    widget.path = path;
    return widget;
  }

  selectWidget(path, schema, nullable) {
    const id = `f-${path}`;
    const select = el("select", { id, name: path });
    const blank = nullable || schema.default === undefined;
    if (blank) select.append(el("option", { value: "", text: "—" }));
    for (const value of schema.enum) select.append(el("option", { value, text: value }));
    const set = (v) => (select.value = v ?? schema.default ?? "");
    set();
    return {
      id, kind: "select", control: select, set,
      get: () => (select.value === "" || same(select.value, schema.default) ? undefined : select.value),
    };
  }

  presetOrCustomWidget(path, schema) {
    // fal's video_size: a preset name, or {width, height}.
    const branches = schema.anyOf.map((b) => resolve(this.doc, b));
    const presets = branches.find((b) => b.enum)?.enum ?? [];
    const custom = branches.find((b) => b.type === "object");
    const id = `f-${path}`;
    const select = el("select", { id, name: path },
      ...presets.map((value) => el("option", { value, text: value })),
      custom ? el("option", { value: "__custom", text: "custom size…" }) : null);
    const sizes = el("div", { class: "inline", hidden: true });
    const parts = Object.entries(custom?.properties ?? {}).map(([name, prop]) => {
      const input = el("input", { type: "number", id: `f-${path}.${name}`, name: `${path}.${name}`, min: prop.minimum, max: prop.maximum, step: 1, value: prop.default });
      sizes.append(el("label", { class: "field small", "data-path": `${path}.${name}` }, `${prop.title ?? name} `, input, el("span", { class: "field-error" })));
      return [name, input];
    });
    const sync = () => (sizes.hidden = select.value !== "__custom");
    select.addEventListener("change", sync);
    const set = (v) => {
      if (v && typeof v === "object") {
        select.value = "__custom";
        for (const [name, input] of parts) input.value = v[name] ?? "";
      } else select.value = v ?? schema.default ?? presets[0];
      sync();
    };
    set();
    return {
      id, kind: "preset-or-custom", control: el("div", {}, select, sizes), set,
      get: () => {
        if (select.value !== "__custom") return same(select.value, schema.default) ? undefined : select.value;
        return Object.fromEntries(parts.filter(([, i]) => i.value !== "").map(([name, i]) => [name, numberOrText(i.value)]));
      },
    };
  }

  checkboxesWidget(path, schema) {
    const id = `f-${path}`;
    const options = resolve(this.doc, schema.items).enum;
    const boxes = options.map((value) => [value, el("input", { type: "checkbox", value, name: path })]);
    const control = el("div", { class: "chips", id, role: "group" },
      ...boxes.map(([value, box]) => el("label", { class: "chip" }, box, ` ${value}`)));
    const set = (v) => boxes.forEach(([value, box]) => (box.checked = Array.isArray(v) && v.includes(value)));
    return {
      id, kind: "multi", control, set,
      get: () => {
        const picked = boxes.filter(([, box]) => box.checked).map(([value]) => value);
        return picked.length ? picked : undefined;
      },
    };
  }

  rowsWidget(path, schema) {
    // A list of objects (turbo's loras: {path, scale}): rows to add and remove.
    const id = `f-${path}`;
    const item = resolve(this.doc, schema.items);
    const rows = el("div", { class: "rows", id });
    const widgets = [];
    const renumber = () => rows.querySelectorAll(":scope > .row").forEach((row, i) => {
      row.dataset.path = `${path}.${i}`;
      row.querySelectorAll("[data-sub]").forEach((f) => (f.dataset.path = `${path}.${i}.${f.dataset.sub}`));
    });
    const addRow = (value = {}) => {
      const row = el("div", { class: "row field" });
      const fields = Object.entries(item.properties).map(([name, prop]) => {
        const input = prop.type === "number" || prop.type === "integer"
          ? el("input", { type: "number", step: prop.type === "integer" ? 1 : "any", value: value[name] ?? prop.default, name: `${path}.${name}` })
          : el("input", { type: "text", value: value[name] ?? "", placeholder: prop.description, name: `${path}.${name}`, spellcheck: "false" });
        row.append(el("label", { class: "field small", "data-sub": name, title: prop.description ?? "" }, `${prop.title ?? name} `, input, el("span", { class: "field-error" })));
        return [name, input, prop];
      });
      const entry = { row, fields };
      row.append(el("button", { type: "button", class: "icon remove", title: "Remove", text: "✕", onclick: () => {
        widgets.splice(widgets.indexOf(entry), 1);
        row.remove();
        renumber();
        this.changed();
      } }), el("span", { class: "field-error" }));
      widgets.push(entry);
      rows.append(row);
      renumber();
    };
    const add = el("button", { type: "button", class: "secondary add", text: `+ add ${(item.title ?? "item").toLowerCase()}`, onclick: () => { addRow(); this.changed(); } });
    const set = (v) => {
      widgets.splice(0).forEach((w) => w.row.remove());
      (Array.isArray(v) ? v : []).forEach((value) => addRow(value));
    };
    return {
      id, kind: "rows", control: el("div", {}, rows, add), set,
      get: () => {
        const list = widgets.map(({ fields }) => Object.fromEntries(fields
          .filter(([, input]) => input.value !== "")
          .map(([name, input, prop]) => [name, prop.type === "number" || prop.type === "integer" ? numberOrText(input.value) : input.value])));
        return list.length ? list : undefined;
      },
    };
  }

  numberWidget(path, schema) {
    const id = `f-${path}`;
    const integer = schema.type === "integer";
    const input = el("input", { type: "number", id, name: path, min: schema.minimum, max: schema.maximum, step: integer ? 1 : "any",
      placeholder: schema.default == null ? "random" : undefined });
    const set = (v) => (input.value = v ?? schema.default ?? "");
    set();
    return {
      id, kind: "number", control: input, set,
      get: () => {
        if (input.value === "") return undefined;
        const value = numberOrText(input.value);
        return same(value, schema.default) ? undefined : value;
      },
    };
  }

  booleanWidget(path, schema) {
    const id = `f-${path}`;
    const box = el("input", { type: "checkbox", id, name: path });
    const set = (v) => (box.checked = Boolean(v ?? schema.default));
    set();
    return { id, kind: "boolean", control: box, set, get: () => (box.checked === Boolean(schema.default) ? undefined : box.checked) };
  }

  objectWidget(path) {
    // Any other nested object, edited as JSON (no endpoint has one today besides video_size's branch).
    const id = `f-${path}`;
    const area = el("textarea", { id, name: path, rows: 3, spellcheck: "false" });
    const set = (v) => (area.value = v === undefined ? "" : JSON.stringify(v));
    return {
      id, kind: "json", control: area, set,
      get: () => {
        if (!area.value.trim()) return undefined;
        try {
          return JSON.parse(area.value);
        } catch {
          return area.value; // the server says what is wrong with it
        }
      },
    };
  }

  fileOrUrlWidget(path, schema) {
    const id = `f-${path}`;
    const url = el("input", { type: "url", id, name: path, placeholder: "paste a URL, or choose a local file →", spellcheck: "false" });
    const accept = path.includes("image") ? "image/*" : path.includes("video") ? "video/*" : undefined;
    const file = el("input", { type: "file", accept, name: `${path}.file`, "aria-label": `${schema.title ?? path}: local file` });
    const state = el("span", { class: "muted upload-state", role: "status" });
    file.addEventListener("change", () => {
      const chosen = file.files?.[0];
      if (!chosen) return;
      state.textContent = `uploading ${chosen.name}…`;
      url.value = "";
      const pending = upload(chosen)
        .then((fileUrl) => {
          url.value = fileUrl;
          state.textContent = `uploaded ${chosen.name} (${formatBytes(chosen.size)})`;
          state.dataset.done = "1";
          this.changed();
        })
        .catch((err) => {
          state.textContent = `upload failed: ${err.message}`;
        })
        .finally(() => this.uploads.delete(pending));
      this.uploads.add(pending);
    });
    const set = (v) => {
      url.value = v ?? "";
      file.value = "";
      state.textContent = "";
      delete state.dataset.done;
    };
    return { id, kind: "file-or-url", control: el("div", { class: "file-or-url" }, url, el("span", { class: "muted", text: " or " }), file, state), set,
      get: () => (url.value.trim() ? url.value.trim() : undefined) };
  }

  textWidget(path, schema, long) {
    const id = `f-${path}`;
    const example = schema.examples?.[0];
    const input = long
      ? el("textarea", { id, name: path, rows: 3, placeholder: example, spellcheck: "true" })
      : el("input", { type: "text", id, name: path, placeholder: example });
    const set = (v) => (input.value = v ?? schema.default ?? "");
    set();
    return { id, kind: "text", control: input, set, get: () => (input.value === "" || same(input.value, schema.default) ? undefined : input.value) };
  }
}

/** A number when the text is one, else the text: the server says what is wrong with it (and an
 * integer field given 2.5 gets 2.5, for the same reason). */
function numberOrText(text) {
  const n = Number(text);
  return text.trim() === "" || Number.isNaN(n) ? text : n;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}
