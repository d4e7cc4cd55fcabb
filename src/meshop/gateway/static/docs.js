// Renders /openapi.json as a list of operations: no framework, no CDN, no build step.
// Sections follow the document's tags (each service's customer operations in the order a
// customer meets them, then the admin operations); each operation shows its contract's
// example request and answer before the schemas.
"use strict";

const REASONS = { 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function resolve(schema, doc, depth) {
  if (!schema || depth > 6) return schema;
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return resolve(doc.components.schemas[name], doc, depth + 1);
  }
  if (schema.properties) {
    const out = {};
    for (const [key, value] of Object.entries(schema.properties)) out[key] = resolve(value, doc, depth + 1);
    return { type: "object", required: schema.required || [], properties: out };
  }
  if (schema.items) return { type: "array", items: resolve(schema.items, doc, depth + 1) };
  return schema;
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

// The example request as it goes over the wire: request line, headers, body.
function exampleRequest(path, method, op) {
  const params = op.parameters || [];
  let target = path;
  for (const p of params) {
    if (p.in === "path" && p.example !== undefined) target = target.replace(`{${p.name}}`, encodeURIComponent(p.example));
  }
  const lines = [`${method.toUpperCase()} ${target}`];
  if (op.security) lines.push("Authorization: Bearer <access_token from POST /api/users/login>");
  if (params.some((p) => p.in === "header" && p.name === "Idempotency-Key")) lines.push("Idempotency-Key: <a new unique key per order>");
  const body = op.requestBody && op.requestBody.content["application/json"];
  if (body && body.example !== undefined) lines.push("Content-Type: application/json", "", json(body.example));
  return lines.join("\n");
}

function success(op) {
  return Object.entries(op.responses).find(([status]) => status.startsWith("2"));
}

function exampleAnswer(op) {
  const [status, response] = success(op);
  const content = response.content && response.content["application/json"];
  const line = `${status} ${REASONS[status] || response.description}`;
  return content && content.example !== undefined ? `${line}\n\n${json(content.example)}` : line;
}

function operation(path, method, op, doc) {
  const body = el("div", { class: "body" });
  body.append(
    el("h4", {}, "Example request"), el("pre", { class: "example-request" }, exampleRequest(path, method, op)),
    el("h4", {}, "Example answer"), el("pre", { class: "example-answer" }, exampleAnswer(op)));
  if (op.parameters) {
    const rows = op.parameters.map((p) => el("tr", {}, el("td", {}, p.name), el("td", {}, p.in), el("td", {}, p.required ? "required" : "")));
    body.append(el("h4", {}, "Parameters"), el("table", {}, ...rows));
  }
  const responses = Object.entries(op.responses).map(([status, r]) => el("tr", {}, el("td", {}, status), el("td", {}, r.description)));
  body.append(el("h4", {}, "Responses"), el("table", {}, ...responses));
  const request = op.requestBody && op.requestBody.content["application/json"];
  if (request) body.append(el("details", {}, el("summary", {}, "Request body schema"), el("pre", {}, json(resolve(request.schema, doc, 0)))));
  const [, ok] = success(op);
  const content = ok.content && ok.content["application/json"];
  if (content) body.append(el("details", {}, el("summary", {}, "Answer body schema"), el("pre", {}, json(resolve(content.schema, doc, 0)))));
  const summary = el("summary", {},
    el("span", { class: `method ${method}` }, method.toUpperCase()),
    el("span", { class: "path" }, path),
    el("span", {}, op.summary || ""),
    el("span", { class: "access" }, op["x-meshop-access"] || ""));
  return el("details", { class: "operation", "data-search": `${method} ${path} ${op.summary || ""}`.toLowerCase() }, summary, body);
}

// One section per tag, in the document's order; operations in the document's order.
function sections(doc) {
  const byTag = new Map((doc.tags || []).map((tag) => [tag.name, { tag, items: [] }]));
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const name = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(name)) byTag.set(name, { tag: { name }, items: [] });
      byTag.get(name).items.push(operation(path, method, op, doc));
    }
  }
  return [...byTag.values()].filter((s) => s.items.length).map(({ tag, items }) => {
    const heading = el("h2", {}, tag.name);
    if (tag.description) heading.append(el("small", {}, ` ${tag.description}`));
    return { node: el("section", { "data-tag": tag.name }, heading, ...items), items };
  });
}

async function main() {
  const target = document.getElementById("operations");
  const response = await fetch("/openapi.json");
  const doc = await response.json();
  document.getElementById("title").textContent = `${doc.info.title} ${doc.info.version}`;
  const parts = sections(doc);
  const items = parts.flatMap((part) => part.items);
  target.replaceChildren(...parts.map((part) => part.node));
  target.dataset.count = String(items.length);
  document.getElementById("filter").addEventListener("input", (event) => {
    const text = event.target.value.toLowerCase();
    for (const item of items) item.hidden = !item.dataset.search.includes(text);
    for (const part of parts) part.node.hidden = part.items.every((item) => item.hidden);
  });
}

main().catch((error) => {
  document.getElementById("operations").textContent = `Could not load /openapi.json: ${error}`;
});
