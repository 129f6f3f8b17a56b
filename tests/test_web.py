"""The runs service's web page (src/shaping/runs/static/) in a real headless Chromium, driven by
Playwright, against the real service (`python -m shaping.runs serve`), DVC queue and worker over a
private copy of the built smoke repo. Screenshots go to the test's tmp_path, and to docs/img/ when
SHAPING_WRITE_SCREENSHOTS=1."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, Service, copy_smoke_repo, running_service

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(
        "no Chromium at /usr/bin/chromium: apt-get install chromium (.ci/run does where it can)",
        allow_module_level=True,
    )
try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    pytest.skip("no playwright: pip install -e '.[dev]'", allow_module_level=True)

# the system Chromium, as it is: never `playwright install` (no download), nothing reaching out
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = f"web-test-{secrets.token_hex(8)}"
SLOW = 300_000  # ms: a smoke run waits behind the one before it on one worker (~20-30 s each on 2 cores)


@pytest.fixture(scope="module")
def service(smoke_repo_built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    repo = copy_smoke_repo(smoke_repo_built, tmp_path_factory.mktemp("web") / "repo")
    with running_service(repo, KEY) as server:
        yield server


PNG_COLORS = """async (b64) => {
  const img = new Image();
  img.src = "data:image/png;base64," + b64;
  await img.decode();
  const canvas = new OffscreenCanvas(img.naturalWidth, img.naturalHeight);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const px = new Uint32Array(ctx.getImageData(0, 0, canvas.width, canvas.height).data.buffer);
  const counts = new Map();
  for (const p of px) counts.set(p, (counts.get(p) || 0) + 1);
  return [counts.size, Math.max(...counts.values()) / px.length, canvas.width, canvas.height];
}"""


def screenshot(page: Page, decoder: Page, folder: Path, name: str, full_page: bool = False) -> Path:
    """A screenshot, checked not to be blank: the PNG file decoded (an <img> drawn on a canvas in the
    `decoder` tab) has many colours and no one colour nearly everywhere."""
    path = folder / name
    page.screenshot(path=str(path), full_page=full_page)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    distinct, top, width, height = decoder.evaluate(PNG_COLORS, base64.b64encode(data).decode())
    assert width >= 400 and height >= 400 and distinct > 50 and top < 0.97, (name, distinct, top, width, height)
    return path


def login(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#login-key", KEY)
    page.click("#login-submit")
    expect(page.locator("#login")).to_be_hidden()


def submit(table: Page, name: str) -> None:
    """Submits the New run form; the run appears in the table (a refusal shows under the overrides)."""
    table.click("#new-submit")
    outcome = table.locator(f'#runs-table tbody tr[data-id="{name}"], #new-overrides-error:not(:empty)')
    expect(outcome.first).to_be_visible(timeout=60_000)
    assert table.locator(f'#runs-table tbody tr[data-id="{name}"]').is_visible(), table.inner_text(
        "#new-overrides-error"
    )


def points(page: Page, chart: str, series: int = 1) -> int:
    """How many points a uPlot chart of the page draws in one series (window.shapingCharts)."""
    return int(
        page.evaluate(
            "([n, s]) => { const c = window.shapingCharts[n];"
            " return c ? c.data[s].filter(v => v != null).length : -1 }",
            [chart, series],
        )
    )


def wait_until(page: Page, check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        page.wait_for_timeout(250)


@pytest.mark.slow
def test_web_page(service: Service, tmp_path: Path) -> None:
    url = service.url
    shots = tmp_path / "screenshots"
    shots.mkdir()
    api = httpx.Client(base_url=url, timeout=120, headers={"X-Api-Key": KEY})
    errors: list[str] = []
    started = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
            decoder = context.new_page()  # decodes the screenshots (about:blank)
            table = context.new_page()
            table.on("pageerror", lambda err: errors.append(f"table: {err}"))
            row = lambda run_id: table.locator(f'#runs-table tbody tr[data-id="{run_id}"]')  # noqa: E731

            # the page (no key needed) asks for the key; a wrong one is refused and asked for again
            loaded = time.monotonic()
            table.goto(f"{url}/")
            expect(table.locator("#login")).to_be_visible()
            table.fill("#login-key", "not-the-key")
            table.click("#login-submit")
            expect(table.locator("#login-message")).to_contain_text("refused")
            expect(table.locator("#login")).to_be_visible()
            table.fill("#login-key", KEY)
            table.click("#login-submit")
            expect(table.locator("#login")).to_be_hidden()
            expect(table.locator("#runs-empty")).to_contain_text("No runs yet")
            print(f"\nempty table shown {time.monotonic() - loaded:.2f} s after GET / (one wrong key typed)")
            expect(table.locator("#live")).to_have_text("live")  # GET /events, read with fetch and the key
            assert table.evaluate("sessionStorage.getItem('shaping.apiKey')") == KEY
            table.evaluate("window.notReloaded = true")  # gone if the page ever reloads

            # the New run form: conf/'s groups with their defaults; a bad override shows the API's message
            table.click("#nav-new")
            expect(table.locator("#group-lora")).to_have_value("default")
            assert table.locator("#group-lora option").count() == len(
                api.get("/config").json()["groups"]["lora"]["options"]
            )
            expect(table.locator("#group-experiment")).to_have_value("")  # no default: (none)
            table.select_option("#group-experiment", "smoke")
            table.fill("#new-overrides", "lora.rr=4")
            table.click("#new-submit")
            expect(table.locator("#new-overrides-error")).to_contain_text("lora.rr", timeout=60_000)
            expect(table.locator("#new-overrides")).to_have_attribute("aria-invalid", "true")
            assert api.get("/runs").json() == {"runs": []}

            # three runs through the form (one worker: they run in turn): r4 and r2 to compare, long to cancel
            for name, overrides in (("r4", "lora.r=4"), ("r2", "lora.r=2"), ("long", "train.max_steps=2000")):
                if name != "r4":
                    table.click("#nav-new")
                table.select_option("#group-experiment", "smoke")
                table.fill("#new-overrides", overrides)
                table.fill("#new-name", name)
                submit(table, name)
                assert table.evaluate("location.hash") == "#/"
            assert api.get("/runs/r4").json()["overrides"] == ["+experiment=smoke", "lora.r=4"]
            expect(row("r4").locator("td.overrides")).to_contain_text("lora.r=4")

            # r4 goes to running in the table; its page (a second tab) follows it to the end
            expect(row("r4").locator(".badge")).to_have_text("running", timeout=SLOW)
            page = context.new_page()
            page.on("pageerror", lambda err: errors.append(f"run page: {err}"))
            login(page, f"{url}/#/runs/r4")
            expect(page.locator("#run-title")).to_have_text("r4")
            expect(page.locator("#run-status")).to_have_text(re.compile("running|succeeded"))
            expect(page.locator("#run-status")).to_have_text("succeeded", timeout=SLOW)
            wait_until(page, lambda: points(page, "loss") >= 1, 60, "r4's loss curve")
            expect(page.locator("#run-heartbeat")).to_contain_text("ago")
            expect(page.locator("#run-log")).to_contain_text("Running stage 'train'", timeout=30_000)
            expect(page.locator('#run-artifacts button[data-path="models/adapter"]')).to_be_visible(timeout=60_000)
            committed = api.get("/runs/r4").json()["metrics"]["eval/metrics.json"]
            tuned_loss = page.locator('#run-metrics td[data-metric="tuned.loss"]')
            expect(tuned_loss).to_have_text(f"{committed['tuned']['loss']:.4f}")
            assert page.locator("#run-cancel").is_disabled() and page.locator("#run-retry").is_disabled()
            with page.expect_download() as download:  # fetch with the key, then a blob URL
                page.click('#run-artifacts button[data-path="eval/metrics.json"]')
            assert json.loads(Path(download.value.path()).read_text()) == committed

            # the table followed it without a reload: succeeded, with its metrics
            table.bring_to_front()  # a tab in the background has its timers throttled, as a user's would
            expect(row("r4").locator(".badge")).to_have_text("succeeded", timeout=30_000)
            expect(row("r4").locator("td.tuned_loss")).to_have_text(f"{committed['tuned']['loss']:.4f}")
            expect(row("r4").locator("td.gap_closed")).to_have_text(f"{committed['gap_closed']:.3f}")
            expect(row("r4").locator("td.eos_tuned")).to_have_text(f"{committed['samples']['tuned']['eos_rate']:.2f}")
            assert table.evaluate("window.notReloaded") is True

            # long: its page shows the loss curve growing live, a progress bar against its 2000 steps, an
            # ETA; then it is cancelled from there
            page.bring_to_front()
            page.evaluate("location.hash = '#/runs/long'")
            expect(page.locator("#run-title")).to_have_text("long")
            expect(page.locator("#run-status")).to_have_text("running", timeout=SLOW)
            wait_until(page, lambda: points(page, "loss") >= 1, 240, "long's first loss point")
            first = points(page, "loss")
            wait_until(page, lambda: points(page, "loss") > first, 120, "long's loss curve to gain points")
            assert page.evaluate("window.shapingTrace.filter(t => t.run === 'long').length") >= 2
            progress = page.locator("#run-progress")
            assert progress.get_attribute("max") == "2000" and float(progress.evaluate("p => p.value")) > 0
            expect(page.locator("#run-progress-text")).to_contain_text(re.compile(r"/ 2000 .*ETA \d+:\d\d"))
            expect(page.locator("#run-stage")).to_have_text("train")
            screenshot(page, decoder, shots, "run-page.png", full_page=True)
            page.click("#run-cancel")
            expect(page.locator("#run-status")).to_have_text("cancelled", timeout=60_000)
            table.bring_to_front()  # a tab in the background has its timers throttled, as a user's would
            expect(row("long").locator(".badge")).to_have_text("cancelled", timeout=30_000)
            expect(page.locator("#run-retry")).to_be_enabled()

            # r2 (it ran between r4 and long): the best tuned loss of the two is marked
            expect(row("r2").locator(".badge")).to_have_text("succeeded", timeout=SLOW)
            losses = {
                r: api.get(f"/runs/{r}").json()["metrics"]["eval/metrics.json"]["tuned"]["loss"] for r in ("r4", "r2")
            }
            best = min(losses, key=losses.__getitem__)
            expect(row(best).locator("td.tuned_loss")).to_have_class(re.compile(r"\bbest\b"))
            # sorting from the keyboard, and the filter
            table.locator('th[data-col="tuned_loss"] button').focus()
            table.keyboard.press("Enter")
            expect(table.locator('th[data-col="tuned_loss"]')).to_have_attribute("aria-sort", "ascending")
            expect(table.locator("#runs-table tbody tr").first).to_have_attribute("data-id", best)
            table.fill("#runs-filter", "cancel")
            expect(table.locator("#runs-table tbody tr")).to_have_count(1)
            table.fill("#runs-filter", "")
            expect(table.locator("#runs-table tbody tr")).to_have_count(3)
            table.locator("#runs-filter").blur()
            screenshot(table, decoder, shots, "table.png")

            # compare r4 and r2: both loss curves, the params that differ, the generations side by side
            row("r4").locator("input[type=checkbox]").check()
            expect(table.locator("#compare-btn")).to_be_disabled()
            row("r2").locator("input[type=checkbox]").check()
            table.click("#compare-btn")
            assert table.evaluate("location.hash") == "#/compare/r4,r2"
            wait_until(
                table, lambda: points(table, "compare", 1) >= 1 and points(table, "compare", 2) >= 1, 60, "curves"
            )
            lora_r = table.locator('#compare-params tr[data-param="lora.r"] td')
            expect(lora_r).to_have_text(["4", "2"])
            assert table.locator('#compare-params tr[data-param="seed"]').count() == 0
            samples = api.get("/runs/r4/artifacts/eval/samples.jsonl").text.splitlines()
            prompts = table.locator("#compare-samples article")
            expect(prompts).to_have_count(len(samples))
            first_prompt = json.loads(samples[0])
            cards = prompts.first.locator(".sample h5")
            expect(cards).to_have_text(
                [
                    re.compile("^base"),
                    re.compile("^teacher"),
                    "tuned: r4 · " + first_prompt["tuned_finish"],
                    re.compile("^tuned: r2"),
                ]
            )
            expect(prompts.first.locator(".sample p").nth(2)).to_have_text(first_prompt["tuned"] or "(empty reply)")
            screenshot(table, decoder, shots, "compare.png", full_page=True)
            assert table.evaluate("window.notReloaded") is True

            # a narrow window: nothing scrolls sideways (tables scroll in their own box)
            for view, where in ((table, "#/"), (page, "#/runs/r4")):
                view.set_viewport_size({"width": 400, "height": 800})
                view.evaluate(f"location.hash = '{where}'")
                view.wait_for_timeout(500)
                assert view.evaluate("document.documentElement.scrollWidth") <= 400, where
            screenshot(table, decoder, shots, "table-narrow.png", full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    print(f"browser part: {time.monotonic() - started:.0f} s; screenshots in {shots}")
    if os.environ.get("SHAPING_WRITE_SCREENSHOTS") == "1":
        (REPO / "docs" / "img").mkdir(exist_ok=True)
        for name, dest in (
            ("table.png", "runs-table.png"),
            ("run-page.png", "runs-page.png"),
            ("compare.png", "runs-compare.png"),
        ):
            shutil.copy(shots / name, REPO / "docs" / "img" / dest)
