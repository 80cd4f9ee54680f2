"""`frtf demo` in a real browser: the command started as a user starts it, driven in Debian's headless
Chromium with Selenium, reading the answers from the page as a person would.

One server and one browser serve the whole walk (enroll, identify, verify, a file that is not a photo,
the Model tab, remove), because starting them costs most of the time.  Screenshots of each step are saved
under the test's tmp_path and their paths printed (`pytest -s` shows them).

The browser is Debian's `chromium` + `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver;
`.ci/run` installs them).  Nothing is downloaded: the driver is given to Selenium explicitly, which
skips Selenium Manager, and SE_OFFLINE forbids it anyway.  Without them the test is skipped, saying why.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from own_people import tiny_model_folder

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SERVER_START_S = 150
STEP_S = 60
THRESHOLD = "0.9"  # the untrained tiny model: a face against itself scores ~0.98, two people ~0.7


def _skip(reason: str):
    print(f"SKIPPED test_demo_browser: {reason}")
    pytest.skip(reason)


def _requirements():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        _skip(f"headless Chromium is not installed ({', '.join(missing)} missing): "
              "apt-get install chromium chromium-driver")
    for module, why in (("selenium", "selenium"), ("gradio", "gradio (the demo extra)")):
        try:
            __import__(module)
        except ImportError:
            _skip(f"{why} is not installed: pip install '.[test]'")


def _photos(folder: Path) -> dict:
    import cv2

    try:
        from matplotlib import cbook

        grace_path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (ImportError, OSError, ValueError):
        _skip("matplotlib's grace_hopper.jpg sample photo is not installed")
    try:
        from skimage import data
    except ImportError:
        _skip("scikit-image (its astronaut photo) is not installed")
    folder.mkdir()
    grace = cv2.imread(str(grace_path))
    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    group = np.full((grace.shape[0], grace.shape[1] + astronaut.shape[1], 3), 255, np.uint8)
    group[:, :grace.shape[1]] = grace
    group[:astronaut.shape[0], grace.shape[1]:] = astronaut
    paths = {"grace": folder / "grace.jpg", "mirror": folder / "grace_mirrored.png", "group": folder / "group.jpg",
             "text": folder / "notes.txt"}
    shutil.copy(grace_path, paths["grace"])
    cv2.imwrite(str(paths["mirror"]), grace[:, ::-1])
    cv2.imwrite(str(paths["group"]), group)
    paths["text"].write_text("shopping list: milk, eggs\n")
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: Path, tmp_path: Path, port: int):
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "gradio_cache"), FRTF_CACHE_DIR=str(tmp_path / "cache"),
               GRADIO_ANALYTICS_ENABLED="False", TF_CPP_MIN_LOG_LEVEL="2")
    log = open(tmp_path / "server.log", "w")
    command = [sys.executable, "-m", "face_recognition_tf", "demo", str(model), "--port", str(port),
               "--gallery-file", str(tmp_path / "people.npz"), "--threshold", THRESHOLD]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"frtf demo exited with {server.returncode}:\n{(tmp_path / 'server.log').read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return server, log
        except OSError:
            time.sleep(0.5)
    server.kill()
    pytest.fail(f"frtf demo did not answer within {SERVER_START_S} s:\n{(tmp_path / 'server.log').read_text()}")


def _browser():
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1700", "--lang=en-US"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


class Page:
    """The few things a test does on the demo page, by the elem_ids app.py gives its components."""

    def __init__(self, driver, shots: Path):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.shots = driver, shots
        self.wait = WebDriverWait(driver, STEP_S)
        self.saved = []

    def css(self, selector):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, elem_id) -> str:
        found = self.css(f"#{elem_id}")
        return found[0].text if found else ""

    def tab(self, name):
        self.wait.until(lambda _: any(b.text.strip() == name for b in self.css("button[role=tab]")))
        next(b for b in self.css("button[role=tab]") if b.text.strip() == name).click()

    def upload(self, elem_id, *paths):
        for button in self.css(f"#{elem_id} button[aria-label=Clear]"):
            button.click()
        field = self.wait.until(lambda _: (self.css(f"#{elem_id} input[type=file]") or [None])[0])
        field.send_keys("\n".join(str(p) for p in paths))
        for path in paths:
            self.wait.until(lambda _: self.css(f'#{elem_id} td.filename[aria-label="{Path(path).name}"]'))
        time.sleep(0.5)  # the upload's bytes reach the session's memory in a quick request of their own

    def press(self, elem_id, result_id, expected: str) -> str:
        self.css(f"#{elem_id}")[0].click()
        self.wait.until(lambda _: expected in self.text(result_id))
        time.sleep(0.5)  # images arrive after the text
        return self.text(result_id)

    def shot(self, name):
        path = self.shots / f"{len(self.saved) + 1:02d}_{name}.png"
        self.driver.save_screenshot(str(path))
        self.saved.append(path)
        print(f"screenshot: {path}")


def test_demo_in_a_headless_browser(tmp_path):
    _requirements()
    photos = _photos(tmp_path / "photos")
    import keras

    keras.utils.set_random_seed(1)  # the scores the assertions rely on do not move between runs
    model = tiny_model_folder(tmp_path / "model")
    port = _free_port()
    server, log = _start_server(model, tmp_path, port)
    driver = None
    try:
        driver = _browser()
        driver.get(f"http://127.0.0.1:{port}/")
        page = Page(driver, tmp_path)
        page.wait.until(lambda _: "Face recognition demo" in page.text("intro"))
        assert "0 people enrolled" in page.text("intro")

        page.tab("Enroll")
        page.wait.until(lambda _: page.css("#enroll-name textarea, #enroll-name input"))
        page.css("#enroll-name textarea, #enroll-name input")[0].send_keys("Grace Hopper")
        page.upload("enroll-photos", photos["grace"], photos["text"])
        said = page.press("enroll-button", "enroll-result", "Enrolled")
        assert "Enrolled Grace Hopper from 1 photo(s); 1 person enrolled." in said
        assert "Skipped photo 2: not a readable image" in said
        page.wait.until(lambda _: "Grace Hopper" in page.text("people-table"))
        page.wait.until(lambda _: page.css("#enroll-crops img"))  # the aligned face that was enrolled
        page.shot("enroll")

        page.tab("Identify")
        page.upload("identify-photo", photos["group"])
        said = page.press("identify-button", "identify-result", "found")
        assert "2 face(s) found, 1 recognised" in said
        assert "#1: Grace Hopper" in said and "#2: unknown" in said
        table = page.text("identify-table")
        assert "Grace Hopper" in table and "match" in table and "below threshold" in table
        page.shot("identify")

        page.tab("Verify")
        page.upload("verify-a", photos["grace"])
        page.upload("verify-b", photos["mirror"])
        said = page.press("verify-button", "verify-result", "Same person")
        assert f"threshold {float(THRESHOLD):.3f} (given with --threshold)" in said
        similarity = float(said.split("Cosine similarity ")[1].split()[0])
        assert float(THRESHOLD) <= similarity <= 1.0
        page.shot("verify")

        page.upload("verify-b", photos["text"])
        said = page.press("verify-button", "verify-result", "Could not compare")
        assert "photo B: not a readable image" in said
        page.shot("not_an_image")

        page.tab("Model")
        page.wait.until(lambda _: "mobilefacenet" in page.text("model-card"))
        card = page.text("model-card")
        assert "32-D" in card and "(x - 127.5) / 128" in card and str(tmp_path / "people.npz") in card
        page.shot("model")

        page.tab("Enroll")
        page.wait.until(lambda _: page.css("#remove-name input"))
        page.css("#remove-name input")[0].click()
        page.wait.until(lambda _: any(o.text.strip() == "Grace Hopper" for o in page.css("[role=option]")))
        next(o for o in page.css("[role=option]") if o.text.strip() == "Grace Hopper").click()
        said = page.press("remove-button", "enroll-result", "Removed")
        assert "Removed Grace Hopper (1 photo(s)); 0 people enrolled." in said
        page.wait.until(lambda _: "0 people enrolled" in page.text("intro"))
        page.wait.until(lambda _: not page.css("#enroll-crops img"))  # the last enrollment's faces are gone
        page.shot("removed")
    finally:
        if driver is not None:
            driver.quit()
        server.send_signal(signal.SIGTERM)  # frtf demo stops as on Ctrl+C: Gradio empties its cache
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    print(f"server log: {tmp_path / 'server.log'}")
    assert server.returncode == 0, (tmp_path / "server.log").read_text()
    assert not (tmp_path / "people.npz").exists()  # the last person removed took the gallery file along
    left = [p for p in (tmp_path / "gradio_cache").rglob("*") if p.is_file()]
    assert not left, f"uploads or results left in Gradio's cache after the server stopped: {left}"
