"""The take browser in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

One project of three takes sampled by the shipped demo model (2 s each) and one server for the module;
the page is loaded once and used as a producer would: it must draw the waveforms, spectrogram and the
section/bar ruler, play a take, store a rating, and run a regenerate whose progress shows and whose
new take appears in the list.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ui_helpers import demo_project

CHROMIUM = Path(os.environ.get("DR2STUDIO_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DR2STUDIO_CHROMEDRIVER", "/usr/bin/chromedriver"))

pytestmark = pytest.mark.slow

#: Fraction of a canvas's pixels that differ from its background for it to count as drawn.
DRAWN = 0.01
_PIXELS_JS = """
const c = document.querySelector(arguments[0]);
if (!c || !c.width || !c.height) return -1;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let differ = 0;
for (let i = 0; i < d.length; i += 4) {
  if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2] || d[i + 3] !== d[3]) differ++;
}
return differ / (d.length / 4);
"""


def _browser():
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"headless browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
                    "apt-get install chromium chromium-driver (scripts/setup.sh does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (dev extra)")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1400,1100", "--mute-audio"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def studio():
    from dr2studio.studio import Studio

    return Studio.load()


@pytest.fixture(scope="module")
def project(tmp_path_factory, studio) -> Path:
    folder = tmp_path_factory.mktemp("ui-browser") / "Browser Song"
    demo_project(folder, studio, takes=3, seconds=2.0, steps=2)
    return folder


@pytest.fixture(scope="module")
def server(project, studio):
    from dr2studio.engine import LocalEngine
    from dr2studio.ui import UiServer

    engine = LocalEngine(studio)
    srv = UiServer(project, engine=engine, port=0, steps=2)
    yield srv
    srv.close()
    engine.close()


@pytest.fixture(scope="module")
def page(server):
    driver = _browser()
    driver.set_script_timeout(30)
    driver.get(server.url)
    try:
        _wait(driver, lambda: driver.execute_script("return document.body.dataset.ready") == "1", 30, "the page to load")
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    logs = ""
    try:
        logs = "\n".join(str(e) for e in driver.get_log("browser"))
    except Exception:
        pass
    shown = driver.execute_script("return document.querySelector('#status').textContent")
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; page status: {shown!r}\n{logs}")


def _drawn(driver, selector: str) -> float:
    return float(driver.execute_script(_PIXELS_JS, selector))


def test_page_draws_every_take_and_the_ruler(page):
    takes = page.execute_script("return [...document.querySelectorAll('#takes .take')].map(li => li.dataset.take)")
    assert takes == ["take1", "take2", "take3"]
    _wait(page, lambda: page.execute_script(
        "return [...document.querySelectorAll('#takes canvas.mini-wave')].every(c => c.dataset.drawn === '1')"), 20,
        "the take list's waveforms")
    for i in range(1, 4):
        assert _drawn(page, f"#takes .take:nth-child({i}) canvas.mini-wave") > DRAWN
    _wait(page, lambda: page.execute_script("return document.querySelector('#spec').dataset.drawn === '1'"), 20,
          "the waveform and spectrogram")
    for lane in ("#wave", "#spec", "#ruler"):
        assert _drawn(page, lane) > DRAWN, f"{lane} is blank"
    labels = page.execute_script("return [...document.querySelectorAll('#lyrics .section .label')].map(e => e.textContent)")
    assert labels == ["intro 1", "verse 1", "chorus 1", "outro 1"]
    assert "Neon city calling me tonight" in page.find_element("css selector", "#lyrics").text
    assert "120" in page.find_element("css selector", "#ruler-note").text  # bars from the take's tempo
    settings = page.find_element("css selector", "#settings").text
    assert "seed" in settings and "11" in settings  # take1 was sampled with seed 11


def test_play_a_take(page):
    page.find_element("css selector", "#play").click()
    _wait(page, lambda: page.execute_script("return document.querySelector('#player-a').currentTime") > 0, 20,
          "the audio element to play")
    page.find_element("css selector", "#play").click()  # pause
    assert page.execute_script("return document.querySelector('#player-a').src").endswith("/api/takes/take1/audio/mix")


def test_loop_a_region_and_switch_a_b_at_the_same_position(page):
    # drag over the middle of the waveform: the loop region is 0.5..1.0 s of the 2 s take
    page.execute_script("""
      const w = document.querySelector('#wave'), r = w.getBoundingClientRect(), y = r.top + r.height / 2;
      const at = (f) => ({clientX: r.left + r.width * f, clientY: y, bubbles: true});
      w.dispatchEvent(new MouseEvent('mousedown', at(0.25)));
      w.dispatchEvent(new MouseEvent('mousemove', at(0.5)));
      w.dispatchEvent(new MouseEvent('mouseup', at(0.5)));""")
    assert page.find_element("css selector", "#loop").is_selected()
    assert page.find_element("css selector", "#loop-range").text == "0:00.5–0:01.0"
    page.find_element("css selector", "#play").click()
    times = []
    for _ in range(25):  # 2.5 s of playing: past the region's end several times, never out of it
        times.append(page.execute_script("return document.querySelector('#player-a').currentTime"))
        time.sleep(0.1)
    assert min(times) >= 0.45 and max(times) <= 1.1, times
    assert max(times) - min(times) > 0.2  # it played
    select = page.find_element("css selector", "#compare")
    page.execute_script("arguments[0].value = 'take2'; arguments[0].dispatchEvent(new Event('change'))", select)
    _wait(page, lambda: page.execute_script("return document.querySelector('#player-b').readyState") >= 1, 10, "take B")
    page.find_element("css selector", "#ab").click()
    a, b, a_paused, b_paused, b_src = page.execute_script("""
      const a = document.querySelector('#player-a'), b = document.querySelector('#player-b');
      return [a.currentTime, b.currentTime, a.paused, b.paused, b.src];""")
    assert a_paused and not b_paused and b_src.endswith("/api/takes/take2/audio/mix")
    assert abs(a - b) < 0.1 and 0.45 <= b <= 1.1  # B starts where A was
    assert page.find_element("css selector", "#ab-side").text == "B"
    page.find_element("css selector", "#ab").click()  # back to A, and stop
    page.find_element("css selector", "#play").click()
    page.find_element("css selector", "#loop").click()
    assert page.execute_script("return document.querySelector('#player-b').paused")


def test_rate_a_take(page, project):
    from dr2studio.ratings import RatingStore

    page.find_element("css selector", "#ratings button[data-dimension='musicality'][data-stars='4']").click()
    store = RatingStore(project)
    _wait(page, lambda: any(r.source == "web" for r in store.history("take1")), 10, "the rating to be stored")
    rating = [r for r in store.history("take1") if r.source == "web"][-1]
    assert (rating.take, rating.stars, rating.dimension) == ("take1", 4, "musicality")
    assert store.current("take1")["musicality"] == 4.0
    _wait(page, lambda: page.execute_script(
        "return document.querySelectorAll(\"#ratings tr[data-dimension='musicality'] button.on\").length") == 4, 5,
        "the page to show 4 stars")


def test_regenerate_shows_progress_and_the_new_take(page, project):
    from dr2studio.audio.daw import project_layout, read_manifest

    page.execute_script("""
      window.progressSeen = 0;
      const orig = window.EventSource;
      window.EventSource = function (url) { const s = new orig(url);
        s.addEventListener('progress', () => { window.progressSeen++; }); return s; };
      document.querySelector('#regen-section').value = '2';""")  # chorus 1
    page.find_element("css selector", "#act-regenerate").click()
    card = _wait(page, lambda: page.find_elements("css selector", "#jobs .job"), 10, "the job card")[0]
    _wait(page, lambda: page.execute_script("return window.progressSeen") > 0, 60, "progress events")
    _wait(page, lambda: len(page.find_elements("css selector", "#takes .take")) == 4, 90, "the new take in the list")
    assert card.get_attribute("data-state") == "done"
    assert float(card.find_element("css selector", "progress").get_attribute("value")) == 1.0
    new = page.execute_script("return [...document.querySelectorAll('#takes .take')].map(li => li.dataset.take)")[-1]
    assert new.startswith("ui-")
    entry = [t for t in read_manifest(project_layout(project))["takes"] if t["take"] == new][0]
    assert entry["parent_take"] == "take1" and entry["action"] == "regenerate" and entry["kind"] == "infill"
    edit = entry["settings"]["edits"][-1]
    assert edit["kind"] == "infill" and 0.9 < edit["start"] < edit["end"] <= 2.0
    assert (project / entry["files"]["mix"]).is_file()
    page.find_element("css selector", "#jobs .job .new-take").click()  # the new take opens, with its history
    _wait(page, lambda: page.find_element("css selector", "#take-title").text == new, 10, "the new take to open")
    assert "infill" in page.find_element("css selector", "#history").text
    assert "take1" in page.find_element("css selector", "#history").text
