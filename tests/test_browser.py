"""The built book in a real browser (Debian's Chromium, driven by Playwright), offline.

Every page of the table of contents loads from a local server without console errors and
without asking any other host for anything; its audio players load (each reaches a finite,
non-zero duration, and every one decodes to a sound at the players' common peak, loud
enough to hear); no output prints a regression check's True/False or a Python dict; the
introduction's claims table has a verdict per finding; its ipywidgets render. Screenshots of the
Listening pages and of the explorer go to `_build/screenshots/` (the CI artifact folder).
"""

from __future__ import annotations

import fnmatch
import functools
import http.server
import json
import math
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
# Never `playwright install`: Debian's Chromium, kept off the network it cannot reach anyway.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 900}
SCREENSHOT_MAX_HEIGHT = 3000  # px: the top of a long page, a file of well under 1.5 MB
# Pages that must carry audio players: the Listening part (screenshotted), the front end and
# the Results pages (what a cluster holds, what a model confuses, the curriculum heard).
LISTENING_PAGES = ["prototypes-*", "timbre-*"]
PAGES_WITH_PLAYERS = [*LISTENING_PAGES, "frontend", "ablation-*", "clustering-*",
                      "classification-*"]
WIDGET_VIEW = 'script[type="application/vnd.jupyter.widget-view+json"]'
# ipywidgets' html-manager renders each view into a `.widget-subarea` that it inserts next to
# the view's <script> placeholder (in the same cell output container).
RENDERED_WIDGET = ":scope > .widget-subarea > .jupyter-widgets"

# Waits, in a page, for every <audio> element's metadata (or its error, or a timeout) and
# returns what each reached.
AUDIO_METADATA_JS = """async (timeoutMs) => {
  const players = [...document.querySelectorAll("audio")];
  const ready = (audio) => new Promise((resolve) => {
    const done = () => resolve({
      duration: audio.duration,
      error: audio.error ? audio.error.code : null,
      src: (audio.currentSrc || audio.querySelector("source")?.src || audio.src || "").slice(0, 40),
    });
    if (audio.readyState >= 1 || audio.error) return done();
    audio.addEventListener("loadedmetadata", done, {once: true});
    audio.addEventListener("error", done, {once: true});
    for (const source of audio.querySelectorAll("source")) {
      source.addEventListener("error", done, {once: true});
    }
    setTimeout(done, timeoutMs);
  });
  return Promise.all(players.map(ready));
}"""
# Decodes every <audio> element's own source with Web Audio: per player its duration in
# seconds and the peak and RMS of its first channel in dBFS.
AUDIO_LEVELS_JS = """async () => {
  const levels = [];
  for (const audio of document.querySelectorAll("audio")) {
    const src = audio.currentSrc || audio.querySelector("source")?.src || audio.src;
    const bytes = await (await fetch(src)).arrayBuffer();
    const decoded = await new OfflineAudioContext(1, 1, 44100).decodeAudioData(bytes);
    const samples = decoded.getChannelData(0);
    let peak = 0, energy = 0;
    for (const x of samples) { peak = Math.max(peak, Math.abs(x)); energy += x * x; }
    const db = (v) => 20 * Math.log10(Math.max(v, 1e-12));
    const caption = audio.closest("figure, div")?.innerText?.slice(0, 60) || "";
    levels.push({duration: decoded.duration, peak: db(peak),
                 rms: db(Math.sqrt(energy / Math.max(samples.length, 1))), caption});
  }
  return levels;
}"""
# Every player is normalised to a -3 dBFS peak (hearproto.viz.PLAYER_PEAK_DBFS); MP3 coding
# moves a peak by a fraction of a dB. A sound at this RMS or below is heard as silence.
PLAYER_PEAK_RANGE_DBFS = (-6.0, 0.0)
AUDIBLE_RMS_DBFS = -40.0
# What a regression check or a stray print leaves on a page: a line ending in True or False,
# or a Python dict written into the text.
CHECK_LINE = re.compile(r"(^|:\s)(True|False)\s*$", re.M)
RAW_DICT = re.compile(r"\{'[^'\n]{1,40}': ")
OUTPUTS_TEXT_JS = """() => [...document.querySelectorAll(".cell_output")]
  .map((output) => output.innerText).join("\\n")"""
WIDGETS_RENDERED_JS = f"""() => [...document.querySelectorAll('{WIDGET_VIEW}')]
  .every((view) => view.parentElement.querySelector('{RENDERED_WIDGET}') !== null)"""


def toc_pages() -> list[str]:
    """The root and every chapter (and section) file of book/_toc.yml, in order."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [re.sub(r"\.(md|ipynb)$", "", page) for page in pages]


def notebook_has_players(name: str) -> bool:
    """Whether book/NAME.ipynb holds audio players among its (executed) outputs."""
    path = BOOK / f"{name}.ipynb"
    if not path.is_file():
        return False
    outputs = [output for cell in json.loads(path.read_text())["cells"]
               for output in cell.get("outputs", [])]
    return any("<audio" in "".join(output.get("data", {}).get("text/html", ""))
               for output in outputs)


def saved_audio_widgets(name: str) -> int:
    """How many ipywidgets Audio models book/NAME.ipynb saved in its widget state (each
    renders one more <audio> element in the browser)."""
    path = BOOK / f"{name}.ipynb"
    if not path.is_file():
        return 0
    state = (json.loads(path.read_text())["metadata"].get("widgets", {})
             .get("application/vnd.jupyter.widget-state+json", {}).get("state", {}))
    return sum(model.get("model_name") == "AudioModel" for model in state.values())


def unavailable(reason: str):
    """Fail on CI (the browser check is part of it), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required on CI)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def server(built_book):
    """The built book over HTTP on localhost (a free port): its base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(built_book)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A headless Chromium context with a fresh profile, offline except for localhost."""
    if not CHROMIUM.is_file():
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the Python package playwright is missing: make install")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
        yield context
        context.close()


class Visit:
    """One page opened in the browser, with everything that went wrong while it loaded."""

    def __init__(self, browser, server: str, name: str):
        self.server = server
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.page = page = browser.new_page()
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("response", lambda response: response.status >= 400 and self.failed.append(
            f"{response.status} {response.url}"))
        page.on("requestfailed", lambda request: self.failed.append(
            f"{request.failure} {request.url}"))
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        # Nothing leaves the machine: requests to other hosts are recorded, then refused.
        page.route("**/*", lambda route: route.continue_() if self.local(route.request.url)
                   else route.abort())
        page.goto(f"{server}{name}.html", wait_until="load")
        page.wait_for_load_state("networkidle")

    def local(self, url: str) -> bool:
        return url.startswith(self.server) or urlsplit(url).scheme in ("data", "blob")

    def _console(self, message) -> None:
        # The browser asks for /favicon.ico on its own; the book has none.
        favicon = message.location.get("url", "").endswith("/favicon.ico")
        if message.type == "error" and not favicon:
            self.errors.append(f"console error: {message.text}")

    def wait_for_widgets(self) -> int:
        """Waits until every widget view on the page has rendered: how many there are."""
        views = self.page.locator(WIDGET_VIEW).count()
        if views:
            try:
                self.page.wait_for_function(WIDGETS_RENDERED_JS, timeout=20_000)
            except Exception as error:  # playwright's TimeoutError: say what went wrong
                pytest.fail(f"{self.page.url}: the widgets did not render ({error}); failed "
                            f"requests {self.failed}, errors {self.errors}", pytrace=False)
        return views

    def check(self) -> None:
        """No request to another host, no failed request, no console or page errors."""
        elsewhere = [url[:200] for url in self.requests if not self.local(url)]
        assert not elsewhere, f"{self.page.url} asked other hosts for:\n" + "\n".join(elsewhere)
        assert not self.failed, f"{self.page.url}: failed requests:\n" + "\n".join(self.failed)
        assert not self.errors, f"{self.page.url}:\n" + "\n".join(self.errors)

    def screenshot(self, name: str) -> Path:
        """The top of the full page (at most SCREENSHOT_MAX_HEIGHT px) as _build/screenshots/."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        height = self.page.evaluate("document.documentElement.scrollHeight")
        clip = {"x": 0, "y": 0, "width": VIEWPORT["width"],
                "height": min(height, SCREENSHOT_MAX_HEIGHT)}
        self.page.screenshot(path=path, full_page=True, clip=clip)
        assert path.stat().st_size > 10_000, f"{path} looks empty"
        return path


@pytest.fixture
def visit(browser, server):
    opened = []

    def open_page(name: str) -> Visit:
        opened.append(Visit(browser, server, name))
        return opened[-1]

    yield open_page
    for page in opened:
        page.page.close()


def test_the_toc_pages_with_players_include_the_listening_pages_and_the_front_end(built_book):
    with_players = {name for name in toc_pages()
                    if "<audio" in (built_book / f"{name}.html").read_text()}
    for pattern in PAGES_WITH_PLAYERS:
        matching = fnmatch.filter(toc_pages(), pattern)
        assert matching, f"no page {pattern} in book/_toc.yml"
        assert set(matching) <= with_players, f"no audio players on {set(matching) - with_players}"
    for name in toc_pages():
        if notebook_has_players(name):
            assert name in with_players, f"book/{name}.ipynb has players, {name}.html has none"


@pytest.mark.parametrize("name", toc_pages())
def test_page_loads_offline_and_plays(visit, built_book, name):
    opened = visit(name)
    page = opened.page
    opened.wait_for_widgets()  # if any: they render once the page has loaded

    expected = len(re.findall(r"<audio\b", (built_book / f"{name}.html").read_text()))
    if notebook_has_players(name):
        assert expected, f"book/{name}.ipynb holds audio players, {name}.html none"
    widget_players = saved_audio_widgets(name)
    assert page.locator(".widget-subarea audio").count() == widget_players
    assert page.locator("audio").count() == expected + widget_players
    expected += widget_players
    if expected:
        players = page.evaluate(AUDIO_METADATA_JS, 10_000)
        silent = [p for p in players if p["error"] is not None
                  or not isinstance(p["duration"], (int, float))
                  or not math.isfinite(p["duration"]) or p["duration"] <= 0]
        assert not silent, (
            f"{len(silent)} of {len(players)} players on {name} did not load: {silent[:5]}")
        levels = page.evaluate(AUDIO_LEVELS_JS)
        low, high = PLAYER_PEAK_RANGE_DBFS
        wrong = [p for p in levels if not (p["duration"] > 0 and low <= p["peak"] <= high
                                           and p["rms"] > AUDIBLE_RMS_DBFS)]
        assert not wrong, (f"{len(wrong)} of {len(levels)} players on {name} are not at a "
                           f"{low:g} to {high:g} dBFS peak, or are quieter than "
                           f"{AUDIBLE_RMS_DBFS:g} dBFS RMS: {wrong[:5]}")

    shown = page.evaluate(OUTPUTS_TEXT_JS)
    for pattern, what in ((CHECK_LINE, "a check line"), (RAW_DICT, "a Python dict")):
        found = pattern.search(shown)
        assert not found, f"{name} shows {what}: {shown[max(0, found.start() - 80):found.end() + 40]!r}"

    if any(fnmatch.fnmatch(name, pattern) for pattern in LISTENING_PAGES):
        opened.screenshot(name)
    opened.check()


def test_the_claims_table_renders_with_a_verdict_per_finding(visit):
    from hearproto.runner.claims import FINDINGS

    opened = visit("intro")
    tables = opened.page.locator("table")
    claims = [tables.nth(i) for i in range(tables.count())
              if FINDINGS[0][1] in tables.nth(i).inner_text()]
    assert len(claims) == 1, "intro.html: no claims table (or more than one)"
    rows = claims[0].locator("tbody tr")
    assert rows.count() == len(FINDINGS)
    for i, (_, finding) in enumerate(FINDINGS):
        cells = rows.nth(i).locator("td")
        assert cells.nth(0).inner_text().strip() == finding
        verdicts = [cells.nth(j).inner_text() for j in range(1, cells.count())]
        assert verdicts and all(v.startswith(("✓ holds", "✗ does not hold", "○ undecided",
                                              "· not measured")) for v in verdicts), verdicts
    opened.check()


def test_explorer_widget_renders(visit):
    if "explorer" not in toc_pages():
        pytest.skip("explorer is not in book/_toc.yml yet")
    opened = visit("explorer")
    views = opened.wait_for_widgets()
    assert views, "explorer.html has no widget view: did book/explorer.ipynb save its widget state?"
    assert opened.page.locator(".widget-subarea > .jupyter-widgets").count() >= views
    opened.screenshot("explorer")
    opened.check()
