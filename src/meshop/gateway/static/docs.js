// Renders /openapi.json as a list of operations: no framework, no CDN, no build step.
"use strict";

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

function operation(path, method, op, doc) {
  const body = el("div", { class: "body" });
  if (op.parameters) {
    const rows = op.parameters.map((p) => el("tr", {}, el("td", {}, p.name), el("td", {}, p.in), el("td", {}, p.required ? "required" : "")));
    body.append(el("h4", {}, "Parameters"), el("table", {}, ...rows));
  }
  const request = op.requestBody && op.requestBody.content["application/json"];
  if (request) body.append(el("h4", {}, "Request body"), el("pre", {}, JSON.stringify(resolve(request.schema, doc, 0), null, 2)));
  const responses = Object.entries(op.responses).map(([status, r]) => el("tr", {}, el("td", {}, status), el("td", {}, r.description)));
  body.append(el("h4", {}, "Responses"), el("table", {}, ...responses));
  const ok = Object.entries(op.responses).find(([status]) => status.startsWith("2"));
  const content = ok && ok[1].content && ok[1].content["application/json"];
  if (content) body.append(el("h4", {}, "Success body"), el("pre", {}, JSON.stringify(resolve(content.schema, doc, 0), null, 2)));
  const summary = el("summary", {},
    el("span", { class: `method ${method}` }, method.toUpperCase()),
    el("span", { class: "path" }, path),
    el("span", {}, op.summary || ""),
    el("span", { class: "access" }, op["x-meshop-access"] || ""));
  const details = el("details", { "data-search": `${method} ${path} ${op.summary || ""}`.toLowerCase() }, summary, body);
  return details;
}

async function main() {
  const target = document.getElementById("operations");
  const response = await fetch("/openapi.json");
  const doc = await response.json();
  document.getElementById("title").textContent = `${doc.info.title} ${doc.info.version}`;
  const items = [];
  for (const [path, methods] of Object.entries(doc.paths).sort()) {
    for (const [method, op] of Object.entries(methods)) items.push(operation(path, method, op, doc));
  }
  target.replaceChildren(...items);
  target.dataset.count = String(items.length);
  document.getElementById("filter").addEventListener("input", (event) => {
    const text = event.target.value.toLowerCase();
    for (const item of items) item.hidden = !item.dataset.search.includes(text);
  });
}

main().catch((error) => {
  document.getElementById("operations").textContent = `Could not load /openapi.json: ${error}`;
});
