"""Screenshots of the take browser for docs/ui.md and the README, from a real project.

The project is made here, in a temporary folder: two takes sampled by the shipped demo model from
``examples/lyrics/demo.lrc``, one take of the DiffRhythm 2 authors' recording ``../shared/real/2.wav``
(when present; it is read in place and rendered into the temporary project, never into the repository),
and the page's own actions: a "new seed" of the first take and an extension of the recording sung by the
demo model. Then headless Chromium (Debian's chromium + chromedriver) photographs the page.

    .venv/bin/python scripts/ui_screenshots.py [--out docs/img] [--seconds 12] [--steps 16] [--keep DIR]

Writes ui-overview.png (a take with its lanes and cards), ui-job.png (an action's live progress and
streamed waveform), ui-real.png (the extended recording: splice on the ruler, edit history).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
REAL = Path(os.environ.get("DR2STUDIO_SHARED", REPO.parent / "shared")) / "real" / "2.wav"


def _browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def _run_action(url: str, take: str, body: dict) -> str:
    import requests

    job = requests.post(f"{url}api/takes/{take}/actions", json=body, timeout=30).json()["job"]
    _wait(lambda: requests.get(f"{url}api/jobs/{job['id']}", timeout=10).json()["job"]["state"] in ("done", "failed"),
          900, f"the {body['action']} of {take}")
    done = requests.get(f"{url}api/jobs/{job['id']}", timeout=10).json()["job"]
    if done["state"] != "done":
        raise SystemExit(f"{body['action']} of {take} failed: {done['error']}")
    return done["new_take"]


def _score(project: Path, takes: list[str]) -> None:
    """Signal-level scores of the demo takes, appended as ``dr2studio eval`` does (skipped where the scorer is absent)."""
    import datetime as dt
    import json

    import soundfile as sf

    try:
        from dr2studio.scoring.signal import score_signal, sections_from_lyrics
    except ImportError as exc:
        print(f"no automatic scores ({exc})", file=sys.stderr)
        return
    manifest = json.loads((project / "dr2studio.json").read_text())
    with open(project / "dr2studio.scores.jsonl", "a", encoding="utf-8") as out:
        for entry in manifest["takes"]:
            if entry["take"] not in takes:
                continue
            audio, rate = sf.read(project / entry["files"]["mix"], dtype="float32", always_2d=True)
            plan = sections_from_lyrics(entry["lyrics"] or "", audio.shape[0] / rate)
            result = score_signal(audio.T, rate, tempo=120.0, key="A minor", sections=plan)
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            out.write(json.dumps({"take": entry["take"], "time": now, **result.to_dict()}) + "\n")


def _shot(driver, path: Path, width: int = 1440) -> None:
    """The whole page, top to bottom, as one picture."""
    driver.execute_script("window.scrollTo(0, 0)")
    for _ in range(3):  # the window includes the browser's own frame: grow until the page fits the viewport
        page, view = driver.execute_script("return [document.documentElement.scrollHeight, window.innerHeight]")
        if page <= view:
            break
        outer = driver.get_window_size()["height"]
        driver.set_window_size(width, min(2600, outer + page - view + 8))
        time.sleep(0.8)  # the canvases redraw at the new size
    driver.save_screenshot(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the demo takes")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--keep", type=Path, help="build the project here and keep it (default: a temporary folder)")
    args = parser.parse_args()

    from dr2studio.audio.stems import export_stems
    from dr2studio.engine import LocalEngine
    from dr2studio.song import Song
    from dr2studio.studio import Studio
    from dr2studio.ui import UiServer
    from ui_helpers import DEMO_STYLE, demo_project

    work = Path(tempfile.mkdtemp(prefix="dr2-ui-shots-"))
    project = args.keep or work / "Neon City"
    studio = Studio.load()
    t0 = time.time()
    takes = demo_project(project, studio, takes=2, seconds=args.seconds, steps=args.steps)
    real = None
    if REAL.is_file():
        song = Song.load(REAL)  # the recording as the producer has it: 44.1 kHz, 16-bit stereo
        song.path = None
        real = export_stems(song, project, take="authors-2", preset="clean", position=0.0)["take"]
    else:
        print(f"{REAL} is absent: no real-recording take", file=sys.stderr)
    print(f"project {project}: {takes + ([real] if real else [])} in {time.time() - t0:.0f} s", file=sys.stderr)

    _score(project, takes)
    from dr2studio.ratings import RatingStore

    store = RatingStore(project)
    store.rate(takes[0], 4, dimension="musicality", source="cli")
    store.rate(takes[0], 3, source="osc")
    engine = LocalEngine(studio)
    server = UiServer(project, engine=engine, port=0, steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    driver = _browser(1500, 1250)
    try:
        _run_action(server.url, takes[0], {"action": "new_seed", "seed": 5})
        extended = None
        if real:
            extended = _run_action(server.url, real, {"action": "extend", "seconds": 8.0, "style": DEMO_STYLE,
                                                      "lyrics": "[chorus]\nSing it loud and let it go"})
        driver.get(server.url)
        _wait(lambda: driver.execute_script("return document.body.dataset.ready") == "1", 60, "the page")
        _wait(lambda: driver.execute_script("return document.querySelector('#spec').dataset.drawn === '1'"), 60, "the lanes")
        driver.execute_script("document.querySelector('#compare').value = arguments[0];"
                              "document.querySelector('#compare').dispatchEvent(new Event('change'));", takes[1])
        driver.execute_script("""
          const w = document.querySelector('#wave'), r = w.getBoundingClientRect(), y = r.top + r.height / 2;
          const at = (f) => ({clientX: r.left + r.width * f, clientY: y, bubbles: true});
          w.dispatchEvent(new MouseEvent('mousedown', at(0.55)));
          w.dispatchEvent(new MouseEvent('mousemove', at(0.72)));
          w.dispatchEvent(new MouseEvent('mouseup', at(0.72)));""")  # a loop region over the chorus
        _shot(driver, args.out / "ui-overview.png")
        # an action in flight: extend the second take, photographed while it samples
        driver.execute_script("document.querySelector('#takes .take:nth-child(2)').click()")
        _wait(lambda: driver.find_element("css selector", "#take-title").text == takes[1], 30, "take 2")
        driver.find_element("css selector", "#act-extend").click()
        _wait(lambda: driver.execute_script(
            "const c = document.querySelector('#jobs .job'); return c && c.querySelector('.listen') && "
            "!c.querySelector('.listen').disabled"), 600, "streamed audio of the extension")
        _shot(driver, args.out / "ui-job.png")
        _wait(lambda: driver.execute_script("const c = document.querySelector('#jobs .job'); return c.dataset.state === 'done'"),
              900, "the extension to finish")
        if extended:
            driver.execute_script("arguments[0].click()", driver.find_element(
                "css selector", f"#takes .take[data-take='{extended}']"))
            _wait(lambda: driver.find_element("css selector", "#take-title").text == extended, 30, "the extended take")
            _wait(lambda: driver.execute_script("return document.querySelector('#spec').dataset.drawn === '1'"), 60, "lanes")
            _shot(driver, args.out / "ui-real.png")
    finally:
        driver.quit()
        server.close()
        engine.close()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"screenshots in {args.out} ({time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
