"""The playground in a real browser (headless Chromium driven by Playwright) against a real server.

Chromium is Debian's package (`make browser`; .ci/run installs it): Playwright downloads no browser.
Without it, or without Playwright, these tests skip, except under MOTIONSERVE_REQUIRE_SERVICES=1 (CI),
where they fail. Each page state is saved as a screenshot under the test's tmp_path and checked not
to be blank. MOTIONSERVE_E2E_PLAYGROUND_PNG=docs/playground.png saves the finished text-to-video
page there too (the README's picture).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from tests.media import make_png
from tests.services import unavailable

from .common import ENDPOINT_IDS, SVD, T2V
from .http_queue import QueueClient
from .server import Server, base_env

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("MOTIONSERVE_E2E_CHROMIUM", "/usr/bin/chromium"))
RUN_TIMEOUT_MS = 600_000  # svd-lcm on a loaded 2-core machine: minutes
SCREENSHOT_ENV = "MOTIONSERVE_E2E_PLAYGROUND_PNG"

# Test-side instruments, installed before the page's own scripts: every value the progress bar
# took, every preview the page was given (its `src`) and every preview image that loaded (the page
# hides its preview once the video is there).
INSTRUMENTS = """
window.__seen = { progress: [], previewUrls: [], previews: [] };
new MutationObserver((records) => {
  for (const r of records) if (r.target.id === "preview" && r.target.getAttribute("src")) window.__seen.previewUrls.push(r.target.getAttribute("src"));
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["src"] });
new MutationObserver((records) => {
  // Several steps can land in one task (one network read): each record keeps the value it replaced.
  const bar = document.getElementById("run-progress");
  if (!bar) return;
  const values = records.filter((r) => r.target === bar && r.attributeName === "value").map((r) => r.oldValue);
  for (const value of [...values.slice(1), bar.getAttribute("value")]) {
    const seen = `${value}/${bar.getAttribute("max")}`;
    if (![null, "0"].includes(value) && window.__seen.progress.at(-1) !== seen) window.__seen.progress.push(seen);
  }
}).observe(document, { subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ["value", "max"] });
document.addEventListener("load", (event) => {
  const img = event.target;
  if (img.id === "preview") window.__seen.previews.push({ step: img.dataset.step, width: img.naturalWidth });
}, true);
"""


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        unavailable(f"no Chromium at {CHROMIUM} (make browser)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--mute-audio"])
        yield chromium
        chromium.close()


def create_key(server: Server, owner: str) -> str:
    """`motionserve keys create --owner OWNER`: a key of its own owner (history is per owner)."""
    out = subprocess.run(
        [sys.executable, "-m", "motionserve", "keys", "create", "--data-dir", str(server.data_dir), "--owner", owner],
        capture_output=True, text=True, env=base_env(), timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1].strip()


@pytest.fixture(scope="module")
def owner_key(server: Server) -> str:
    return create_key(server, "playground-user")


@pytest.fixture(scope="module")
def made_here() -> list[str]:
    """Ids of the requests the browser made in this module, for the history test."""
    return []


class Page:
    """A fresh browser context (its own localStorage) on the server, with the key saved or not."""

    def __init__(self, browser: Any, server: Server, key: str | None, shots: Path, *, enforce_csp: bool) -> None:
        self.server = server
        self.shots = shots
        # Playwright's wait_for_function evaluates its predicate with eval(), which the playground's
        # Content-Security-Policy forbids: tests that wait on page state turn CSP off in their own
        # browser context; test_no_page_loads_anything_from_another_host keeps it on.
        self.context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900},
                                           bypass_csp=not enforce_csp)
        self.requested: list[str] = []
        self.errors: list[str] = []
        if key:
            self.context.add_init_script(f"localStorage.setItem('motionserve.apiKey', {key!r});")
        self.context.add_init_script(INSTRUMENTS)
        self.page = self.context.new_page()
        self.page.on("request", lambda r: self.requested.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if "Content Security Policy" in m.text else None)

    def open(self, path: str = "/") -> Any:
        self.page.goto(self.server.base_url + path)
        self.page.wait_for_selector("body[data-ready]")
        return self.page

    def shot(self, name: str, **kwargs: Any) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), **kwargs)
        assert_not_blank(path)
        return path

    def wait_done(self) -> str:
        self.page.wait_for_selector("#run[data-state=succeeded], #run[data-state=failed], #run[data-state=cancelled]",
                                    timeout=RUN_TIMEOUT_MS)
        return str(self.page.get_attribute("#run", "data-state"))

    def video_loaded(self) -> tuple[int, float]:
        self.page.wait_for_function("document.getElementById('result-video').readyState >= 2", timeout=30_000)
        ready, duration = self.page.evaluate(
            "(() => { const v = document.getElementById('result-video'); return [v.readyState, v.duration]; })()")
        return int(ready), float(duration)

    def close(self) -> None:
        assert not self.errors, f"errors on the page: {self.errors}"
        self.context.close()


@pytest.fixture()
def pages(browser: Any, server: Server, tmp_path: Path) -> Iterator[Any]:
    opened: list[Page] = []

    def make(key: str | None = None, *, enforce_csp: bool = False) -> Page:
        page = Page(browser, server, key, tmp_path, enforce_csp=enforce_csp)
        opened.append(page)
        return page

    yield make
    for page in opened:
        page.close()


def assert_not_blank(path: Path) -> None:
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, f"{path.name} looks blank ({len(colours or [])} colours)"


def current_request(page: Any) -> str:
    page.wait_for_function("document.getElementById('run-id').textContent.length > 0")
    return str(page.text_content("#run-id"))


def fill_small_t2v(page: Any, prompt: str, *, frames: int, steps: int) -> None:
    """The text-to-video form at a custom 64×64 size, through its widgets (the size preset's select)."""
    page.fill("#f-prompt", prompt)
    page.fill("#f-num_frames", str(frames))
    page.fill("#f-num_inference_steps", str(steps))
    page.select_option("#f-video_size", "__custom")
    page.fill("[id='f-video_size.width']", "64")
    page.fill("[id='f-video_size.height']", "64")


def status_url(server: Server, endpoint_id: str, request_id: str) -> str:
    app = "/".join(endpoint_id.split("/")[:2])
    return f"{server.base_url}/queue/{app}/requests/{request_id}/status"


# ---------------------------------------------------------------- tests


def test_text_to_video_from_the_form_with_progress_preview_and_video(
    pages: Any, server: Server, owner_key: str, made_here: list[str]
) -> None:
    view = pages()  # no key yet: typed once into the page
    page = view.open("/")
    view.shot("01-home")
    page.fill("#key-input", owner_key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#key-state.ok")
    page.click(f"a[data-endpoint='{T2V}']")
    page.wait_for_selector("[data-path=prompt] textarea")
    assert page.url.endswith(f"/playground/{T2V}")
    # The form comes from the schema: enums as selects, ranges, the motions and size widgets, help.
    assert page.get_attribute("#f-num_inference_steps", "max") == "50"
    assert page.input_value("#f-num_inference_steps") == "25"  # the default
    assert page.locator("[data-path=motions] input[type=checkbox]").count() == 8
    assert "landscape_16_9" in page.locator("#f-video_size option").all_text_contents()
    assert "inference steps" in page.text_content("[data-path=num_inference_steps] .help").lower()

    fill_small_t2v(page, "a red rocket over the sea", frames=16, steps=20)
    page.check("[data-path=motions] input[value=zoom-in]")
    page.click("#code summary")
    code = page.text_content("#code-text")
    assert 'fal_client.subscribe(' in code and '"num_inference_steps": 20' in code and '"zoom-in"' in code
    assert owner_key.split(":")[1] not in code  # the key never goes into the code
    page.click("#code [data-lang=js]")
    assert 'fal.subscribe("fal-ai/fast-animatediff/text-to-video"' in page.text_content("#code-text")
    view.shot("02-form", full_page=True)

    page.click("#submit")
    request_id = current_request(page)
    made_here.append(request_id)
    page.wait_for_function("window.__seen.progress.length >= 2", timeout=RUN_TIMEOUT_MS)
    view.shot("03-running")
    assert view.wait_done() == "succeeded", page.text_content("#run-error")

    progress = page.evaluate("window.__seen.progress")
    steps = [int(p.split("/")[0]) for p in progress]
    assert steps == sorted(steps) and steps[-1] == 20 and len(set(steps)) >= 2, progress
    # A short run can end between two reads of the stream, so the page may get no preview at all
    # (test_previews_e2e.py checks the statuses); each one it does get must load as an image.
    if page.evaluate("window.__seen.previewUrls"):
        page.wait_for_function("window.__seen.previews.length > 0", timeout=10_000)
        shown = page.evaluate("window.__seen.previews")
        assert all(p["width"] > 0 for p in shown), shown
    ready, duration = view.video_loaded()
    assert ready >= 2 and duration > 0
    assert "step 20/20" in page.text_content("#logs")
    seed = page.text_content("#result-meta dd[data-name=seed]")
    assert seed and seed.strip().isdigit()
    assert page.get_attribute("#download", "href").endswith(".mp4")
    page.evaluate("window.scrollTo(0, 0)")
    done = view.shot("04-done")
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(done, os.environ[SCREENSHOT_ENV])
    assert not [u for u in view.requested if owner_key.split(":")[1] in u], "the key went into a URL"


def test_a_local_png_is_uploaded_through_the_form_for_svd_lcm(
    pages: Any, server: Server, owner_key: str, made_here: list[str], tmp_path: Path
) -> None:
    # One LCM step: svd-lcm always makes 25 frames at its working size, the slowest request on a CPU.
    picture = tmp_path / "picture.png"
    picture.write_bytes(make_png(width=96, height=64))
    view = pages(owner_key)
    page = view.open(f"/playground/{SVD}")
    page.wait_for_selector("[data-path=image_url] input[type=file]")
    page.set_input_files("[data-path=image_url] input[type=file]", str(picture))
    page.wait_for_selector("[data-path=image_url] .upload-state[data-done]")
    uploaded = page.input_value("#f-image_url")
    assert "/files/" in uploaded and uploaded.endswith("/picture.png")
    assert httpx.get(uploaded, verify=False).content == picture.read_bytes()  # the very file, stored
    page.fill("#f-steps", "1")
    view.shot("05-upload")
    page.click("#submit")
    made_here.append(current_request(page))
    assert view.wait_done() == "succeeded", page.text_content("#run-error")
    ready, duration = view.video_loaded()
    assert ready >= 2 and duration > 0
    view.shot("06-upload-done")


def test_a_bad_value_shows_its_422_message_beside_the_field(pages: Any, owner_key: str) -> None:
    view = pages(owner_key)
    page = view.open(f"/playground/{T2V}")
    page.wait_for_selector("#f-prompt")
    page.fill("#f-prompt", "x")
    page.fill("#f-num_inference_steps", "500")
    page.fill("#f-guidance_scale", "-1")
    page.click("#submit")
    steps_error = page.locator("[data-path=num_inference_steps] > .field-error")
    steps_error.wait_for()
    assert "less than or equal to 50" in steps_error.text_content()
    assert "greater than or equal to 0" in page.text_content("[data-path=guidance_scale] > .field-error")
    assert page.get_attribute("[data-path=num_inference_steps]", "class").split().count("invalid") == 1
    assert page.text_content("[data-path=prompt] > .field-error") == ""
    assert page.is_hidden("#run")  # nothing was queued
    view.shot("07-invalid")
    # A required field left empty is named too.
    page.fill("#f-prompt", "")
    page.fill("#f-num_inference_steps", "")
    page.fill("#f-guidance_scale", "")
    page.click("#submit")
    page.wait_for_function("document.querySelector('[data-path=prompt] > .field-error').textContent.length > 0")
    assert "required" in page.text_content("[data-path=prompt] > .field-error").lower()


def test_cancel_stops_a_running_request(pages: Any, server: Server, owner_key: str, made_here: list[str]) -> None:
    view = pages(owner_key)
    page = view.open(f"/playground/{T2V}")
    page.wait_for_selector("#f-prompt")
    fill_small_t2v(page, "a long one", frames=4, steps=50)
    page.click("#submit")
    request_id = current_request(page)
    made_here.append(request_id)
    page.wait_for_function("window.__seen.progress.length >= 1", timeout=RUN_TIMEOUT_MS)  # denoising
    page.click("#cancel")
    assert view.wait_done() == "cancelled"
    assert "cancelled" in page.text_content("#run-error").lower()
    assert page.is_hidden("#cancel")
    steps = [int(p.split("/")[0]) for p in page.evaluate("window.__seen.progress")]
    assert steps[-1] < 50, "it ran to the end"
    view.shot("08-cancelled")
    client = QueueClient(server, owner_key)
    try:
        r = client.http.get(status_url(server, T2V, request_id).removesuffix("/status"))
        assert r.status_code == 499  # cancelled on the server, not just on the page
    finally:
        client.close()


def test_history_lists_the_keys_own_requests_only(
    pages: Any, server: Server, owner_key: str, made_here: list[str]
) -> None:
    other = QueueClient(server, create_key(server, "someone-else"))
    mine = QueueClient(server, owner_key)
    try:
        tiny = {"num_frames": 1, "num_inference_steps": 1, "video_size": {"width": 64, "height": 64}}
        theirs = other.submit(T2V, {"prompt": "not yours", **tiny})
        other.http.put(theirs.cancel_url)
        own = mine.submit(T2V, {"prompt": "from another program", **tiny})
        mine.http.put(own.cancel_url)
    finally:
        other.close()
        mine.close()
    view = pages(owner_key)
    page = view.open("/")
    page.wait_for_selector(f"#history [data-request-id='{own.request_id}']")
    listed = page.eval_on_selector_all("#history [data-request-id]", "items => items.map(i => i.dataset.requestId)")
    assert listed[0] == own.request_id  # newest first
    assert set(made_here) <= set(listed), (made_here, listed)
    assert theirs.request_id not in listed
    view.shot("09-history")
    if made_here:
        # Re-open the first request made in the browser: its form values and its result come back.
        first = made_here[0]
        page.click(f"#history [data-request-id='{first}'] .open")
        page.wait_for_function(f"document.getElementById('run-id').textContent === {first!r}")
        assert view.wait_done() == "succeeded"
        assert page.input_value("#f-num_inference_steps") == "20"  # as the first test filled it
        ready, _ = view.video_loaded()
        assert ready >= 2


def test_no_page_loads_anything_from_another_host(pages: Any, server: Server) -> None:
    paths = ["/", *(f"/playground/{e}" for e in ENDPOINT_IDS), "/docs", "/redoc"]
    ready = {"/docs": ".swagger-ui .opblock", "/redoc": ".api-content"}
    host = urlsplit(server.base_url).netloc
    for n, path in enumerate(paths):
        view = pages(enforce_csp=True)  # and nothing the pages do is refused by their own policy
        foreign: list[str] = []

        def block(route: Any) -> None:
            if urlsplit(route.request.url).netloc == host or route.request.url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                foreign.append(route.request.url)
                route.abort()

        view.page.route("**/*", block)
        view.page.goto(server.base_url + path)
        view.page.wait_for_selector(ready.get(path, "body[data-ready]"), timeout=60_000)
        view.page.wait_for_load_state("networkidle")
        view.shot(f"10-page-{n}")
        assert not foreign, f"{path} loaded {foreign}"
        loaded = [u for u in view.requested if not u.startswith(("data:", "blob:"))]
        assert loaded and all(urlsplit(u).netloc == host for u in loaded), loaded
        # And as served: the page names no other host, nor does any stylesheet it loads.
        with httpx.Client(verify=str(server.tls.ca_cert), timeout=30) as http:
            html = http.get(server.base_url + path).text
            assert "http://" not in html and "https://" not in html, path
            for url in (u for u in loaded if urlsplit(u).path.endswith(".css")):
                css = http.get(url).text.replace(" ", "")
                assert "url(http" not in css and "url('http" not in css and 'url("http' not in css, url
