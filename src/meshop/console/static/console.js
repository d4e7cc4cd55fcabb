// The operations console: logs in as an admin, then polls the console's JSON API.
// No framework, no CDN, no build step. The bearer token lives in this closure only:
// never in a URL, a cookie or localStorage (reloading the page logs out).
"use strict";

(() => {
  const POLL_MS = 2000;
  const TRACES_MS = 5000;
  let token = null;
  let refreshToken = null;
  let timer = null;
  let tracesTimer = null;
  let selectedTrace = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(key, value);
    }
    for (const child of children) node.append(child === null || child === undefined ? "" : child);
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) return "—";
    if (typeof value !== "number") return String(value);
    if (digits === undefined) return Number.isInteger(value) ? String(value) : value.toFixed(2);
    return value.toFixed(digits);
  }

  function num(value, digits, attrs) {
    return el("td", { class: "num", "data-value": value === null || value === undefined ? "" : String(value), ...(attrs || {}) }, fmt(value, digits));
  }

  // A path that may wrap after each "/" in a narrow column (not in the middle of a word).
  function breakable(path) {
    return path.split(/(?<=\/)/).flatMap((part, i) => (i ? [el("wbr"), part] : [part]));
  }

  function fill(id, rows) {
    const body = $(id);
    body.replaceChildren(...rows);
  }

  // A fixed colour per known service (Tableau 10: categorical, distinct hues, legible on
  // white; its red stays free for errors), so a service looks the same in every trace. A
  // service not listed takes a spare colour no other service of the trace has.
  const SERVICE_COLOURS = {
    gateway: "#4e79a7", orders: "#f28e2b", inventory: "#59a14f", payments: "#b07aa1",
    shipping: "#76b7b2", catalog: "#edc948", users: "#9c755f", console: "#ff9da7",
  };
  const SPARE_COLOURS = ["#bab0ac", "#1f3d7a", "#8b0a50", "#3b3b3b"];  // ΔE ≥ 25 from the above

  function coloursOf(services) {
    const spare = SPARE_COLOURS.slice();
    let extra = 0;
    return new Map(services.map((service) => [service, SERVICE_COLOURS[service] || spare.shift()
      || `hsl(${(200 + 137.5 * extra++) % 360}, 65%, 32%)`]));  // golden angle: hues far apart
  }

  class Unauthorized extends Error {}

  async function api(path) {
    const response = await fetch(path, { headers: { authorization: `Bearer ${token}` }, cache: "no-store" });
    if (response.status === 401) throw new Unauthorized("your session ended; log in again");
    if (response.status === 403) throw new Unauthorized("this account is not an admin");
    if (!response.ok) {
      let detail = `${response.status}`;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Error(`${path}: ${detail}`);
    }
    return response.json();
  }

  function setStatus(text) { $("status").textContent = text; }

  // ---- login -------------------------------------------------------------------------

  function showLogin(message) {
    token = null;
    refreshToken = null;
    clearTimeout(timer);
    clearTimeout(tracesTimer);
    $("dashboard").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("login-password").value = "";
    setStatus("");
  }

  async function login(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    const body = JSON.stringify({ email: $("login-email").value, password: $("login-password").value });
    let response;
    try {
      response = await fetch("/api/users/login", { method: "POST", headers: { "content-type": "application/json" }, body });
    } catch (err) {
      $("login-error").textContent = `the gateway did not answer: ${err.message}`;
      return;
    }
    if (!response.ok) {
      $("login-error").textContent = response.status === 401 ? "wrong email or password" : `login failed (${response.status})`;
      return;
    }
    const tokens = await response.json();
    token = tokens.access_token;
    refreshToken = tokens.refresh_token;
    $("login-password").value = "";
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("logout").hidden = false;
    poll();
    pollTraces();
  }

  async function logout() {
    // Revoke the access token and its session (the gateway denies it from now on).
    const body = JSON.stringify({ refresh_token: refreshToken });
    try {
      await fetch("/api/users/logout", { method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body });
    } catch (_) { /* logged out here anyway */ }
    showLogin("logged out");
  }

  // ---- the overview ------------------------------------------------------------------

  async function poll() {
    clearTimeout(timer);
    if (token === null) return;
    try {
      render(await api("/api/console/overview"));
      setStatus(`live · ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      if (err instanceof Unauthorized) { showLogin(err.message); return; }
      setStatus(`update failed: ${err.message}`);
    }
    timer = setTimeout(poll, POLL_MS);
  }

  function render(o) {
    const at = $("scraped-at");
    at.textContent = o.scraped_at ? new Date(o.scraped_at * 1000).toLocaleTimeString() : "not yet";
    at.dataset.value = o.scraped_at === null ? "" : String(o.scraped_at);
    $("window").textContent = o.window_s ? `${o.window_s.toFixed(1)} s` : "(needs two scrapes)";
    renderTopology(o);
    fill("red", o.red.map((s) => el("tr", { "data-testid": `red-${s.service}`, "data-service": s.service },
      el("td", {}, s.service),
      num(s.instances, undefined, { "data-testid": `red-${s.service}-instances` }),
      num(s.requests_total, 0, { "data-testid": `red-${s.service}-requests` }),
      num(s.errors_total, 0, { "data-testid": `red-${s.service}-errors` }),
      num(s.rate_rps, 2, { "data-testid": `red-${s.service}-rate` }),
      num(s.error_rate === null ? null : s.error_rate * 100, 2),
      num(s.latency_mean_ms, 2),
      num(s.latency_p50_ms, 2),
      num(s.latency_p99_ms, 2),
      num(s.in_flight))));
    fill("efficiency", o.efficiency.map((e) => el("tr", { "data-testid": "efficiency-row" },
      el("td", {}, e.caller), el("td", {}, e.target),
      num(e.efficiency, 3, { class: e.efficiency < 0 ? "num negative" : "num" }),
      num(e.recent, 3, { class: e.recent !== null && e.recent < 0 ? "num negative" : "num" }),
      el("td", { class: "wrap" }, Object.entries(e.sent).map(([i, n]) => `${i}: ${n}`).join(", ") || "—"))));
    $("efficiency-note").textContent = o.efficiency_note;
    fill("littles-law", o.littles_law.map((l) => el("tr", { "data-testid": `little-${l.service}` },
      el("td", {}, l.service), num(l.arrival_rate, 2), num(l.time_in_system_ms, 2), num(l.predicted_l, 3), num(l.observed_l, 3))));
    $("reliability-r").textContent = fmt(o.reliability.r, 4);
    $("reliability-r").dataset.value = String(o.reliability.r);
    fill("reliability", o.reliability.steps.map((s) => el("tr", {},
      el("td", {}, s.step), num(s.calls, 0), num(s.succeeded, 0), num(s.reliability, 4))));
    fill("sagas", o.sagas.map((s) => el("tr", {}, el("td", {}, s.saga), el("td", {}, s.state), num(s.count, 0))));
    fill("outbox", o.outbox.map((b) => el("tr", {},
      el("td", {}, b.service), num(b.pending, 0), num(b.oldest_pending_age_s, 1), num(b.published, 0))));
    fill("consumers", o.consumers.map((c) => el("tr", {},
      el("td", {}, c.consumer), num(c.pending, 0), num(c.unacknowledged, 0), num(c.applied, 0), num(c.dead_lettered, 0))));
    const t = o.traces;
    $("trace-stats").textContent = Object.keys(t).length
      ? `spans ${t.spans ?? 0} · kept ${t.kept ?? 0} · dropped ${t.dropped ?? 0} · pending ${t.pending ?? 0}`
      : "";
  }

  function renderTopology(o) {
    const cards = o.services.map((service) => {
      const figures = o.red.find((r) => r.service === service);
      const instances = o.instances.filter((i) => i.service === service).map((i) => {
        const health = i.health === "ready" ? "ready" : i.health === "unreachable" ? "unreachable" : "unready";
        return el("div", { class: "instance", "data-testid": "instance", "data-instance": i.instance_id, title: `${i.address} pid ${i.pid} · zone ${i.zone} · ${i.health}` },
          el("span", { class: `dot ${health}` }), `${i.instance_id} ${i.address} ${i.zone}`,
          el("span", { class: `breaker ${i.breaker}`, title: "breaker state, as its callers see it" }, i.breaker === "none" ? "no callers" : `breaker ${i.breaker}`));
      });
      const summary = figures ? `${fmt(figures.rate_rps, 2)} req/s` : "";
      return el("div", { class: "card", "data-testid": "topology-service", "data-service": service },
        el("h3", {}, service, " ", el("span", { class: "meta" }, summary)), ...instances);
    });
    $("topology").replaceChildren(...cards);
  }

  // ---- traces ------------------------------------------------------------------------

  function traceQuery() {
    const params = new URLSearchParams({ limit: "30" });
    const order = $("trace-order-id").value.trim();
    if (order) params.set("order_id", order);
    if ($("trace-errors").checked) params.set("errors", "true");
    if ($("trace-slow").checked) params.set("slow", "true");
    return `/api/console/traces?${params}`;
  }

  async function pollTraces() {
    clearTimeout(tracesTimer);
    if (token === null) return;
    try {
      const page = await api(traceQuery());
      fill("traces", page.items.map((t) => {
        const services = t.services.join(", ");
        const row = el("tr", { "data-testid": "trace-row", "data-trace-id": t.trace_id, class: t.trace_id === selectedTrace ? "selected" : null },
          el("td", {}, new Date(t.started_at * 1000).toLocaleTimeString()),
          el("td", { class: "wrap", title: t.root }, ...breakable(t.root)), num(t.duration_ms, 1), num(t.spans.length),
          el("td", { class: "wrap", title: services }, services),
          el("td", { class: t.status === "error" ? "status-error" : "" }, t.status),
          el("td", {}, t.kept_because),
          el("td", { class: "id", "data-testid": "trace-order", title: t.order_id || null }, t.order_id || ""));
        row.addEventListener("click", () => showTrace(t));
        return row;
      }));
      if (!page.items.length) fill("traces", [el("tr", {}, el("td", { colspan: "8", class: "meta" }, "no kept trace matches"))]);
    } catch (err) {
      if (err instanceof Unauthorized) { showLogin(err.message); return; }
      setStatus(`traces failed: ${err.message}`);
    }
    tracesTimer = setTimeout(pollTraces, TRACES_MS);
  }

  // The spans as their tree, depth first: each under its parent (by parent_id, whatever
  // the start times say), siblings in start order. A span whose parent is not in the trace
  // (dropped, or still on its way) is a root.
  function spanTree(spans) {
    const ids = new Set(spans.map((s) => s.span_id));
    const children = new Map();
    for (const s of spans) {
      const parent = s.parent_id !== null && s.parent_id !== s.span_id && ids.has(s.parent_id) ? s.parent_id : null;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(s);
    }
    const out = [];
    const seen = new Set();
    const walk = (parent, depth) => {
      for (const s of (children.get(parent) || []).sort((a, b) => a.start_ms - b.start_ms)) {
        if (seen.has(s.span_id)) continue;
        seen.add(s.span_id);
        out.push({ span: s, depth });
        walk(s.span_id, depth + 1);
      }
    };
    walk(null, 0);
    for (const s of spans) if (!seen.has(s.span_id)) out.push({ span: s, depth: 0 });  // a parent cycle
    return out;
  }

  // Axis ticks every 1, 2 or 5 × 10^k ms: the smallest such step giving at most 11 ticks.
  function axisTicks(total) {
    const raw = total / 10;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((candidate) => candidate >= raw * (1 - 1e-9));
    const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    const ticks = [];
    for (let i = 0; i * step <= total * (1 + 1e-9); i += 1) ticks.push({ ms: i * step, label: `${(i * step).toFixed(digits)} ms` });
    return { step, ticks };
  }

  function timeAxis(total, ticks) {
    const track = el("div", { class: "axis-track" }, ...ticks.map(({ ms, label }) => {
      const at = (100 * ms) / total;
      const tick = el("div", { class: `tick${ms === 0 ? " first" : at > 92 ? " last" : ""}`, "data-testid": "axis-tick", "data-ms": String(ms) },
        el("span", { class: "tick-label" }, label));
      tick.style.left = `${at}%`;
      return tick;
    }));
    return el("div", { class: "axis-row", "data-testid": "waterfall-axis" }, el("div", { class: "axis-title meta" }, "time since the trace began"), track);
  }

  function showTrace(t) {
    selectedTrace = t.trace_id;
    for (const row of document.querySelectorAll("#traces tr")) row.classList.toggle("selected", row.dataset.traceId === t.trace_id);
    const box = $("waterfall");
    const total = Math.max(t.duration_ms, 0.001);
    const { step, ticks } = axisTicks(total);
    const colours = coloursOf([...new Set(t.spans.map((s) => s.service))].sort());
    const legend = el("div", { class: "legend" }, ...[...colours].map(([name, colour]) => {
      const swatch = el("span", { class: "swatch", "data-testid": "legend-swatch", "data-service": name });
      swatch.style.background = colour;
      return el("span", {}, swatch, name);
    }));
    const rows = spanTree(t.spans).flatMap(({ span: s, depth }) => {
      const bar = el("div", { class: `span-bar${s.status === "error" ? " error" : ""}`, "data-testid": "span-bar", "data-service": s.service, title: `${s.service} ${s.name}: ${s.duration_ms} ms at +${s.start_ms} ms (${s.status})` });
      bar.style.left = `${(100 * s.start_ms) / total}%`;
      bar.style.width = `${Math.max(0.2, (100 * s.duration_ms) / total)}%`;
      bar.style.background = colours.get(s.service);
      const track = el("div", { class: "span-track" }, bar);
      track.style.backgroundSize = `${(100 * step) / total}% 100%`;  // a grid line under every tick
      const label = el("div", { class: "span-label", title: `${s.service} · ${s.name}` },
        el("span", { class: "span-name", "data-testid": "span-name" }, `${s.status === "error" ? "✖ " : ""}${s.service} · ${s.name}`));
      label.style.paddingLeft = `${depth * 0.9}rem`;
      const row = el("div", { class: "span-row", "data-testid": "span-row", "data-span-id": s.span_id, "data-parent-id": s.parent_id, "data-depth": String(depth) }, label, track);
      const attributes = Object.entries(s.attributes).map(([k, v]) => `${k}=${v}`).join("  ");
      const events = s.events.map((e) => `+${e.time_ms} ms ${e.name} ${Object.entries(e.attributes).map(([k, v]) => `${k}=${v}`).join(" ")}`).join("\n");
      if (!attributes && !events) return [row];
      // Attributes and events open under the span when its row is clicked.
      const detail = el("div", { class: "span-detail", "data-testid": "span-detail", hidden: "" }, [attributes, events].filter(Boolean).join("\n"));
      detail.style.marginLeft = `${depth * 0.9 + 1}rem`;
      row.addEventListener("click", () => { detail.hidden = !detail.hidden; });
      return [row, detail];
    });
    box.replaceChildren(
      el("h3", {}, `trace ${t.trace_id} · ${t.root} · ${fmt(t.duration_ms, 1)} ms · ${t.status}`, t.order_id ? ` · order ${t.order_id}` : ""),
      legend, timeAxis(total, ticks), ...rows);
    box.hidden = false;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("trace-filter").addEventListener("submit", (event) => { event.preventDefault(); pollTraces(); });
    showLogin("");
  });
})();
