"""The operations console on a running shop: its JSON API (admins only) and its page in
headless Chromium, both showing every service with figures that agree with `/metrics`.

The browser test keeps screenshots of the page (the overview at 1280 and 1024 px, and a
checkout's waterfall) in `$MESHOP_TEST_ARTIFACTS/console/`, by default `artifacts/console/`
at the repository's root (ignored by git): CI can keep them, a reviewer can look.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from meshop.analysis.live import parse
from tests.e2e.api import Api, order_body
from tests.e2e.browser import artifacts, browser_page
from tests.e2e.conftest import Shop, start_shop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

EVERY_PROCESS = {"users", "catalog", "inventory", "orders", "payments", "shipping", "console", "gateway"}
#: Widths the page must lay out without sideways scrolling: a laptop's and a small one's.
WIDTHS = (1280, 1024)
#: Two services' colours at least this far apart (CIE76 ΔE) are told apart at a glance;
#: hues hashed from names put gateway and inventory 10.6 apart (two greens).
DISTINCT_DELTA_E = 25.0
ENV = {
    # Every trace is "slow" (kept): the test looks its checkout's trace up by order id.
    "MESHOP_TRACES_SLOW_MS_DEFAULT": "0.001",
    "MESHOP_CONSOLE_SCRAPE_INTERVAL_S": "1",
}


@pytest.fixture(scope="module")
def console_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = start_shop(tmp_path_factory.mktemp("console"), env=ENV)
    yield running
    running.stop()


@pytest.fixture
async def api(console_shop: Shop) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, console_shop.url)


async def admin_token(api: Api, shop: Shop) -> str:
    password = (shop.data_dir / "admin-password").read_text().strip()
    async with api.session.post(
        api.url + "/users/login", json={"email": "admin@meshop.local", "password": password}
    ) as resp:
        assert resp.status == 200
        return str((await resp.json())["access_token"])


async def served_totals(session: aiohttp.ClientSession, shop: Shop) -> dict[str, tuple[float, float]]:
    """service → (requests, 5xx) summed over its instances, scraped directly from /metrics."""
    async with session.get(shop.url + "/_meshop/instances") as resp:
        instances = await resp.json()
    totals: dict[str, tuple[float, float]] = {}
    for instance in instances:
        async with session.get(f"http://{instance['address']}/metrics") as resp:
            samples = parse(await resp.text())
        requests = sum(v for n, _, v in samples if n == "meshop_http_requests_total")
        errors = sum(v for n, labels, v in samples if n == "meshop_http_requests_total" and labels["status"][0] == "5")
        before = totals.get(instance["service"], (0.0, 0.0))
        totals[instance["service"]] = (before[0] + requests, before[1] + errors)
    return totals


async def checkout(api: Api) -> str:
    status, accepted, _ = await api.request(
        "POST", "/orders", order_body(), headers={"idempotency-key": uuid.uuid4().hex}
    )
    assert status == 202
    order = await api.settled(accepted["id"])
    assert order["status"] == "CONFIRMED"
    return str(accepted["id"])


async def test_the_console_api_is_for_admins_and_agrees_with_metrics(api: Api, console_shop: Shop) -> None:
    await api.signup()
    orders = [await checkout(api) for _ in range(2)]
    customer = api.token

    for path in ("/console/overview", "/console/traces"):
        api.token = None
        assert (await api.request("GET", path))[0] == 401
        api.token = customer
        assert (await api.request("GET", path))[0] == 403

    api.token = await admin_token(api, console_shop)
    before, asked_at = await served_totals(api.session, console_shop), time.time()
    deadline = time.monotonic() + 10
    while True:  # the console's next scrape, after the direct one
        status, overview, _ = await api.request("GET", "/console/overview")
        assert status == 200
        if overview["scraped_at"] is not None and overview["scraped_at"] > asked_at:
            break
        assert time.monotonic() < deadline, overview["scraped_at"]
        await asyncio.sleep(0.2)
    after = await served_totals(api.session, console_shop)

    assert set(overview["services"]) == EVERY_PROCESS
    assert {i["service"] for i in overview["instances"] if i["health"] == "ready" and i["scraped"]} == EVERY_PROCESS
    red = {row["service"]: row for row in overview["red"]}
    for service in EVERY_PROCESS:
        assert before[service][0] <= red[service]["requests_total"] <= after[service][0], service
        assert before[service][1] <= red[service]["errors_total"] <= after[service][1], service
    assert red["orders"]["requests_total"] >= 2

    assert overview["reliability"]["r"] == 1.0
    assert {s["step"]: s["calls"] >= 2 for s in overview["reliability"]["steps"]} == {
        "inventory": True,
        "payments": True,
        "shipping": True,
    }
    assert {(s["saga"], s["state"]): s["count"] for s in overview["sagas"]}[("checkout", "completed")] >= 2
    assert any(e["target"] == "inventory" and e["efficiency"] == 1.0 for e in overview["efficiency"])
    assert "-2" in overview["efficiency_note"]
    assert {row["service"] for row in overview["littles_law"]} == EVERY_PROCESS
    assert {c["consumer"] for c in overview["consumers"]} >= {"users.order-stats"}

    deadline = time.monotonic() + 15
    while True:  # a trace is decided once it has gone quiet
        status, page, _ = await api.request("GET", f"/console/traces?order_id={orders[0]}")
        assert status == 200
        # Its polls of GET /orders/{id} carry the order id too: the checkout is the trace through every step.
        if any("shipping" in t["services"] for t in page["items"]):
            break
        assert time.monotonic() < deadline, "the checkout's trace never showed up"
        await asyncio.sleep(0.5)
    trace = next(t for t in page["items"] if "shipping" in t["services"])
    assert {"trace_id", "duration_ms", "spans"} <= set(trace)
    assert trace["order_id"] == orders[0]
    assert {"gateway", "orders", "inventory", "payments", "shipping"} <= {s["service"] for s in trace["spans"]}
    for span in trace["spans"]:
        assert {"service", "name", "start_ms", "duration_ms", "status"} <= set(span)
        assert 0 <= span["start_ms"] <= trace["duration_ms"]
    status, one, _ = await api.request("GET", f"/console/traces/{trace['trace_id']}")
    assert (status, one["trace_id"]) == (200, trace["trace_id"])
    assert (await api.request("GET", "/console/traces/" + "0" * 32))[0] == 404
    status, errors, _ = await api.request("GET", "/console/traces?errors=true&limit=5")
    assert status == 200
    assert all(t["status"] == "error" for t in errors["items"])
    assert (await api.request("GET", "/console/traces?errors=maybe"))[0] == 422


async def test_the_console_page_shows_every_service_with_figures_from_metrics(api: Api, console_shop: Shop) -> None:
    """...and a checkout's trace readably: the traces table fits its card (order id whole),
    the waterfall has a millisecond axis, a colour per service and spans under their parents."""
    from playwright.async_api import expect

    await api.signup()
    order_id = await checkout(api)
    password = (console_shop.data_dir / "admin-password").read_text().strip()
    async with browser_page("the console's browser test") as (page, problems):
        await page.goto(console_shop.url + "/console")
        await page.fill("[data-testid=login-password]", "not the password")
        await page.click("[data-testid=login-submit]")
        # (expect() polls without eval: the page's CSP forbids it, as wait_for_function needs)
        await expect(page.get_by_test_id("login-error")).not_to_have_text("")
        problems.clear()  # the browser reports the refused login (401) as a console error
        await page.fill("[data-testid=login-password]", password)
        await page.click("[data-testid=login-submit]")
        await expect(page.get_by_test_id("topology-service")).to_have_count(len(EVERY_PROCESS), timeout=10_000)
        await expect(page.get_by_test_id("login")).to_be_hidden()
        shown = await page.locator("[data-testid=topology-service]").evaluate_all(
            "cards => cards.map(c => c.dataset.service)"
        )
        assert set(shown) == EVERY_PROCESS
        topology_text = await page.locator("[data-testid=topology]").inner_text()
        assert all(service in topology_text for service in EVERY_PROCESS)

        before, asked_at = await served_totals(api.session, console_shop), time.time()
        deadline = time.monotonic() + 10
        while float(await page.get_by_test_id("scraped-at").get_attribute("data-value") or 0) <= asked_at:
            assert time.monotonic() < deadline, "the page did not show a scrape newer than the direct one"
            await asyncio.sleep(0.2)
        figures = await _figures(page)
        after = await served_totals(api.session, console_shop)
        for service in ("inventory", "orders", "payments", "gateway"):
            assert before[service][0] <= figures[service] <= after[service][0], (service, figures)
        assert figures["orders"] >= 1
        note = await page.locator("[data-testid=efficiency-note]").inner_text()
        assert "below 0" in note
        assert await page.locator("[data-testid=reliability-r]").inner_text() == "1.0000"

        await page.fill("[data-testid=trace-order-id]", order_id)
        deadline = time.monotonic() + 15
        # This checkout's own trace (not its polls' traces, nor an earlier test's checkout).
        checkout_row = page.locator("[data-testid=trace-row]", has_text=order_id).filter(has_text="shipping")
        while not await checkout_row.count():
            assert time.monotonic() < deadline, "the checkout's trace never showed up on the page"
            await page.click("[data-testid=trace-search]")
            await asyncio.sleep(0.5)
        trace_id = str(await checkout_row.get_attribute("data-trace-id"))
        shots = artifacts("console")
        for width in WIDTHS:
            await page.set_viewport_size({"width": width, "height": 900})
            await _assert_traces_table_fits(page, trace_id, order_id)
            await page.screenshot(path=shots / f"overview-{width}.png", full_page=True)

        await page.set_viewport_size({"width": WIDTHS[0], "height": 900})
        await checkout_row.click()
        await page.wait_for_selector("[data-testid=span-bar]")
        await page.get_by_test_id("waterfall").screenshot(path=shots / "waterfall.png")
        bars = await page.locator("[data-testid=span-bar]").evaluate_all(
            "bars => bars.map(b => [b.dataset.service, b.style.left, b.style.width])"
        )
        assert {"gateway", "orders", "inventory", "payments", "shipping"} <= {b[0] for b in bars}
        assert all(left.endswith("%") and width.endswith("%") for _, left, width in bars)
        api.token = await admin_token(api, console_shop)
        status, trace, _ = await api.request("GET", f"/console/traces/{trace_id}")
        assert status == 200
        await _assert_time_axis(page, trace["duration_ms"])
        await _assert_distinct_colours(page)
        await _assert_span_tree(page, trace["spans"])
    assert problems == []  # no script error, no CSP violation


async def _assert_traces_table_fits(page: Any, trace_id: str, order_id: str) -> None:
    """No box around the traces table scrolls sideways, and the row's order id shows whole."""
    overflowing = await page.get_by_test_id("traces").evaluate(
        """table => {
            const wide = [];
            for (let box = table.parentElement; box; box = box.parentElement)
                if (box.scrollWidth > box.clientWidth)
                    wide.push(`${box.tagName}.${box.className}: ${box.scrollWidth} > ${box.clientWidth}`);
            return wide;
        }"""
    )
    width = page.viewport_size["width"]
    assert overflowing == [], (width, overflowing)
    cell = page.locator(f"[data-testid=trace-row][data-trace-id='{trace_id}'] [data-testid=trace-order]")
    text, title, whole, inside = await cell.evaluate(
        """cell => {
            const own = cell.getBoundingClientRect(), card = cell.closest(".panel").getBoundingClientRect();
            return [cell.textContent, cell.title, cell.scrollWidth <= cell.clientWidth,
                    own.left >= card.left && own.right <= card.right && own.right <= window.innerWidth];
        }"""
    )
    assert (text, title, whole, inside) == (order_id, order_id, True, True), width
    # A cell may end in an ellipsis only where its title holds the whole value.
    clipped = await page.locator("[data-testid=trace-row] td:not([title])").evaluate_all(
        "cells => cells.filter(c => c.scrollWidth > c.clientWidth).map(c => c.textContent)"
    )
    assert clipped == [], width


async def _assert_time_axis(page: Any, duration_ms: float) -> None:
    """Ticks labelled "N ms" at a round step (1, 2 or 5 × 10^k), placed where the bars put that time."""
    axis = page.get_by_test_id("waterfall-axis")
    assert await axis.count() == 1, "the waterfall has no time axis"
    track, ticks = await axis.evaluate(
        """axis => {
            const track = document.querySelector("[data-testid=span-bar]").parentElement.getBoundingClientRect();
            const ticks = [...axis.querySelectorAll("[data-testid=axis-tick]")];
            return [[track.left, track.width], ticks.map(t => [t.textContent, t.getBoundingClientRect().left])];
        }"""
    )
    labels = [re.fullmatch(r"(\d+(?:\.\d+)?) ms", text) for text, _ in ticks]
    assert all(labels), ticks
    assert 3 <= len(ticks) <= 11, ticks
    values = [float(label[1]) for label in labels if label]
    step = values[1] - values[0]
    assert values[0] == 0, values
    assert all(math.isclose(b - a, step, rel_tol=1e-6) for a, b in itertools.pairwise(values)), values
    assert round(step / 10 ** math.floor(math.log10(step)), 6) in (1, 2, 5), step
    assert values[-1] <= duration_ms < values[-1] + step, (values, duration_ms)
    left, width = track
    for value, (_, x) in zip(values, ticks, strict=True):
        assert abs(x - (left + width * value / duration_ms)) <= 1.5, (value, x, track)


async def _assert_distinct_colours(page: Any) -> None:
    """One colour per service, the legend's; no two services' colours alike."""
    bars = await page.locator("[data-testid=span-bar]").evaluate_all(
        "bars => bars.map(b => [b.dataset.service, getComputedStyle(b).backgroundColor])"
    )
    swatches = await page.locator("[data-testid=legend-swatch]").evaluate_all(
        "swatches => swatches.map(s => [s.dataset.service, getComputedStyle(s).backgroundColor])"
    )
    colours = dict(swatches)
    # Every bar has its service's colour, the one its legend shows.
    assert {tuple(bar) for bar in bars} == set(colours.items()), (bars, swatches)
    services = sorted(colours)
    alike = [
        (a, b, round(_delta_e(colours[a], colours[b]), 1))
        for i, a in enumerate(services)
        for b in services[i + 1 :]
        if _delta_e(colours[a], colours[b]) < DISTINCT_DELTA_E
    ]
    assert alike == [], colours


def _delta_e(css_a: str, css_b: str) -> float:
    """CIE76 colour difference of two CSS `rgb(r, g, b)` colours."""

    def lab(css: str) -> tuple[float, float, float]:
        def linear(channel: str) -> float:
            c = int(channel) / 255
            return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

        r, g, b = map(linear, re.findall(r"\d+", css)[:3])
        x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
        y = 0.2126 * r + 0.7152 * g + 0.0722 * b
        z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

        def f(t: float) -> float:
            return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

        return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))

    return math.dist(lab(css_a), lab(css_b))


async def _assert_span_tree(page: Any, spans: list[dict[str, Any]]) -> None:
    """Every span once, indented one level deeper than its parent (depth from the trace's
    parent ids), right under it or its earlier siblings' subtrees, siblings in start order."""
    rows = await page.locator("[data-testid=span-row]").evaluate_all(
        """rows => rows.map(r => [r.dataset.spanId,
            r.querySelector("[data-testid=span-name]").getBoundingClientRect().left
            - r.getBoundingClientRect().left])"""
    )
    by_id = {s["span_id"]: s for s in spans}
    assert sorted(span_id for span_id, _ in rows) == sorted(by_id), "each span shown once"

    def parent_of(span_id: str) -> str | None:
        parent = by_id[span_id]["parent_id"]
        return parent if parent in by_id else None  # its parent was not kept: a root

    def depth(span_id: str) -> int:
        parent = parent_of(span_id)
        return 0 if parent is None else 1 + depth(parent)

    indent = dict(rows)
    for i, (span_id, _) in enumerate(rows):
        parent = parent_of(span_id)
        if parent is None:
            continue
        # Under its parent: its indent is deeper by a visible step...
        assert indent[span_id] >= indent[parent] + 4, (by_id[span_id]["name"], by_id[parent]["name"])
        # ...and the nearest row above it one level up is its parent.
        above = next((other for other, _ in reversed(rows[:i]) if depth(other) == depth(span_id) - 1), None)
        assert above == parent, (by_id[span_id]["name"], "shown under", above and by_id[above]["name"])
    by_depth: dict[int, set[float]] = {}
    for span_id, x in rows:
        by_depth.setdefault(depth(span_id), set()).add(round(x, 1))
    assert all(len(xs) == 1 for xs in by_depth.values()), by_depth
    siblings: dict[str | None, list[float]] = {}
    for span_id, _ in rows:
        siblings.setdefault(parent_of(span_id), []).append(by_id[span_id]["start_ms"])
    assert all(starts == sorted(starts) for starts in siblings.values()), siblings


async def _figures(page: Any) -> dict[str, float]:
    """The requests column of the page's RED table, by service."""
    values: dict[str, float] = {}
    for row in await page.locator("#red tr").all():
        service = await row.get_attribute("data-service")
        cell = row.locator(f"[data-testid=red-{service}-requests]")
        values[str(service)] = float(await cell.get_attribute("data-value") or "nan")
    return values
