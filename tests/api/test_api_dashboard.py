"""The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The page must load from the server alone (no CDN), show each peer's state, update live
when a peer dies, and stay usable with thousands of peers. Screenshots land in
build/screenshots/ for people to look at.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_fakes import make_peers
from hbmon.model import Health
from playwright.sync_api import Browser, Page, sync_playwright
from real_product import Product, ProductFactory

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "install the Debian package 'chromium' (make setup does)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page plus what it asked for and complained about."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.foreign: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: None if r.url.startswith((origin, "data:"))
                else self.foreign.append(r.url))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


def open_page(browser: Browser, run: Product, width: int = 1500, height: int = 900) -> Watched:
    page = browser.new_page(viewport={"width": width, "height": height})
    watched = Watched(page, run.url)
    page.goto(run.url + "/")
    page.wait_for_selector('body[data-ready="1"]', timeout=30_000)
    page.wait_for_selector(".conn.live", timeout=30_000)
    return watched


def tile_states(page: Page) -> dict[str, str]:
    states: dict[str, str] = page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('[data-name]')]"
        ".map(e => [e.dataset.name, e.dataset.state]))")
    return states


def chip_count(page: Page, state: str) -> int:
    return int(page.inner_text(f'[data-count="{state}"]'))


def populate(run: Product, n: int, groups: int, seed: int = 7) -> dict[str, Health]:
    rnd = random.Random(seed)
    peers = make_peers(n, groups=groups)
    run.service.add_peers(peers)
    names = [p.name for p in peers]
    states = {name: Health.UP for name in names}
    for name in rnd.sample(names, max(1, n // 40)):
        states[name] = Health.DOWN
    for name in rnd.sample(names, max(1, n // 30)):
        states[name] = Health.DEGRADED
    states[names[-1]] = Health.UNKNOWN
    run.set_states({k: v for k, v in states.items() if v != Health.UNKNOWN},
                           reason="responses")
    run.service.update_peer(names[-2], {"admin_down": True})
    states[names[-2]] = Health.ADMIN_DOWN
    rtt = run.server.app.state.hbmon.rtt
    base = {name: rnd.randint(150, 600) for name in names}
    for i in range(40):  # sparkline history, sampled deterministically
        run.tick({name: int(b * (1 + 0.4 * rnd.random()) + (i * 8 if j % 7 == 0 else 0))
                          for j, (name, b) in enumerate(base.items())})
        rtt.sample()
    return states


def test_dashboard_shows_states_and_follows_a_dying_peer(
    browser: Browser, make_server: ProductFactory,
) -> None:
    run = make_server(dashboard_refresh=0.5)
    expected = populate(run, 64, groups=4)
    w = open_page(browser, run)
    page = w.page

    assert tile_states(page) == {k: str(v) for k, v in expected.items()}
    assert chip_count(page, "UP") == sum(v == Health.UP for v in expected.values())
    assert chip_count(page, "DOWN") == sum(v == Health.DOWN for v in expected.values())
    assert page.locator("section.group").count() == 4
    assert page.locator(".tile canvas").count() == 64  # tiles with sparklines at this size
    # sparklines have ink
    assert page.evaluate("""() => { const c = document.querySelector('.tile.s-UP canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }""")

    victim = next(n for n, s in expected.items() if s == Health.UP)
    down_before = chip_count(page, "DOWN")
    run.set_state(victim, Health.DOWN, reason="3 consecutive misses")
    page.wait_for_selector(f'[data-name="{victim}"][data-state="DOWN"]', timeout=10_000)
    assert chip_count(page, "DOWN") == down_before + 1
    page.wait_for_selector(f'#event-log li:first-child [data-peer="{victim}"]', timeout=10_000)
    assert "DOWN" in page.inner_text("#event-log li:first-child")

    # a peer added through the API shows up without a reload
    with run.client() as c:
        r = c.post("/api/v1/peers", json={"name": "late-joiner", "address": "198.19.1.1",
                                          "peer_id": 70_000, "mac": "02:00:00:00:70:00",
                                          "port": 1, "group": "rack-0"})
        assert r.status_code == 201
    page.wait_for_selector('[data-name="late-joiner"][data-state="UNKNOWN"]', timeout=10_000)

    # the detail panel for the dead peer, then the screenshot people look at
    page.click(f'[data-name="{victim}"]')
    page.wait_for_selector(f'#detail:not([hidden]) >> text={victim}')
    page.wait_for_selector("#detail .history li", timeout=10_000)
    page.mouse.move(0, 0)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"))

    # filter: hide UP peers; search narrows further
    page.click('button.chip[data-state="UP"]')
    page.wait_for_function("() => !document.querySelector('[data-name][data-state=\"UP\"]')")
    shown = tile_states(page)
    assert victim in shown and all(s != "UP" for s in shown.values())
    page.click('button.chip[data-state="UP"]')
    page.fill("#search", "peer-001")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-name]')].every("
        "e => e.dataset.name.includes('peer-001'))")
    assert len(tile_states(page)) == 10

    assert w.foreign == [], "the dashboard must not load anything from elsewhere"
    assert w.errors == []
    page.close()


def test_dashboard_with_4096_peers(browser: Browser, make_server: ProductFactory) -> None:
    run = make_server(dashboard_refresh=2.0)
    expected = populate(run, 4096, groups=16)
    w = open_page(browser, run)
    page = w.page
    states = tile_states(page)
    assert len(states) == 4096
    assert states == {k: str(v) for k, v in expected.items()}
    assert page.locator(".tiles.dots").count() == 16  # dense view past a few hundred
    assert chip_count(page, "DEGRADED") == sum(v == Health.DEGRADED for v in expected.values())

    victim = next(n for n, s in expected.items() if s == Health.UP)
    run.set_state(victim, Health.DOWN, reason="3 consecutive misses")
    page.wait_for_selector(f'[data-name="{victim}"][data-state="DOWN"]', timeout=15_000)

    page.select_option("#group-by", "state")
    page.wait_for_selector('section.group[data-group="DOWN"]')
    first_group = page.eval_on_selector("section.group", "e => e.dataset.group")
    assert first_group == "DOWN"  # worst first
    page.select_option("#group-by", "group")
    page.wait_for_selector('section.group[data-group="rack-0"]')
    page.hover(f'[data-name="{victim}"]')
    page.wait_for_selector("#tooltip:not([hidden])")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-4096.png"))
    page.fill("#search", "peer-40")
    page.wait_for_function("() => document.querySelectorAll('[data-name]').length === 96")
    assert w.foreign == [] and w.errors == []
    page.close()


def test_dashboard_asks_for_a_token_when_reads_are_closed(
    browser: Browser, make_server: ProductFactory,
) -> None:
    from api_harness import TOKEN

    run = make_server(read_auth=True)
    run.service.add_peers(make_peers(3))
    page = browser.new_page()
    page.goto(run.url + "/")
    page.wait_for_selector("#token-dialog[open]", timeout=30_000)
    page.fill("#token-input", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector('body[data-ready="1"]', timeout=30_000)
    page.wait_for_selector('[data-name="peer-0002"]')
    states: Any = tile_states(page)
    assert set(states) == {"peer-0000", "peer-0001", "peer-0002"}
    page.close()


def test_dashboard_shows_bfd_sessions(browser: Browser, make_server: ProductFactory) -> None:
    """A BFD session (issue 13, docs/bfd.md) is a tile like any peer, marked BFD, with its
    session and remote state where a heartbeat peer shows RTT; its details show the
    discriminators and the negotiated intervals. The remote is the memory target's
    answering one (it follows our state: Down -> Init -> Up)."""
    run = make_server(dashboard_refresh=0.5)
    with run.client() as c:
        r = c.post("/api/v1/peers", json={"name": "rtr-1", "kind": "bfd",
                                          "address": "198.19.7.2", "port": 1,
                                          "mac": "02:00:00:00:07:02",
                                          "desired_min_tx_ms": 50, "required_min_rx_ms": 50})
        assert r.status_code == 201, r.text
    w = open_page(browser, run)
    page = w.page
    page.wait_for_selector('[data-name="rtr-1"] .kind', timeout=10_000)
    assert page.inner_text('[data-name="rtr-1"] .kind') == "BFD"
    peers, _ = run.slot("rtr-1")
    deadline = time.monotonic() + 15
    while page.inner_text('[data-name="rtr-1"] .rtt') != "UP/UP":
        assert time.monotonic() < deadline, page.inner_html('[data-name="rtr-1"]')
        peers.dp.run_bfd_rounds(1)  # the BFD fan-out's ticks (the device's timer)
        page.wait_for_timeout(50)
    page.wait_for_selector('[data-name="rtr-1"][data-state="UP"]', timeout=10_000)
    page.click('[data-name="rtr-1"]')
    page.wait_for_selector("#detail:not([hidden]) dl.bfd", timeout=10_000)
    detail = page.inner_text("#detail")
    peer = run.service.get_peer("rtr-1")
    disc = run.service.drivers[peer.switch].guard.discriminator(peer)
    assert "BFD session" in detail and str(disc) in detail and "150 ms" in detail
    assert w.errors == []
    page.close()
