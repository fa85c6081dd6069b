"""The dev pipeline's upload page in a real browser: headless Chromium, driven by Selenium.

The page (`functions/local/web/`) is served at the dev pipeline's `apiUrl`; through its file
input a real photo and a broken file are uploaded exactly as a person would, and the page
must follow each to its end: the photo COMPLETED with its renditions loaded from the CDN
stand-in, the broken file FAILED with its error code. A screenshot of the page is saved to
`bench/out/upload-page-<cloud>.png`.

Chromium is Debian's (`chromium`, `chromium-driver`); the driver is named explicitly, so
Selenium Manager never downloads one. The browser is kept on 127.0.0.1: loopback is never
proxied, and every other request goes to a proxy on 127.0.0.1 that hangs up (`Sinkhole`).
Without Chromium the tests are skipped with the reason, except under CI=true, where they
fail.
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components import outputs as output_names
from functions.local.dev import DevPipeline, GcpDevPipeline
from tests.conftest import PROJECT_ROOT, require

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(120)]

SCREENSHOTS = PROJECT_ROOT / "bench" / "out"
PHOTO = "jpg_canon_g9_4mp.jpg"  # 178 kB, 2560x1600: quick to process, a real camera's file
FINAL = ("COMPLETED", "FAILED", "REJECTED", "ERROR")  # every status a card ends in
PAGE_SECONDS = 60  # the page itself gives up after 90 s; the pipeline needs a few


def browser_tools() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def missing_browser() -> str | None:
    found = dict(zip(("chromium", "chromedriver"), browser_tools(), strict=True))
    missing = [name for name, path in found.items() if path is None]
    if not missing:
        return None
    return (
        f"the browser test needs {' and '.join(missing)} on PATH "
        "(Debian: apt-get install chromium chromium-driver)"
    )


class Sinkhole:
    """The browser's proxy: it hangs up on every request, so nothing reaches the network.

    Chromium asks Google's servers for the time, component updates and sign-in even with
    its background networking disabled; here each such request ends on 127.0.0.1.
    """

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.refused = 0
        threading.Thread(target=self._serve, name="browser-sinkhole", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed
                return
            self.refused += 1
            connection.close()

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone does not
        self._socket.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(missing_browser())
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_tools()
    assert chromium is not None and chromedriver is not None
    sinkhole = Sinkhole()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        # Nothing leaves 127.0.0.1: loopback is never proxied, everything else is.
        f"--proxy-server=http://127.0.0.1:{sinkhole.port}",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--no-first-run",
        "--no-default-browser-check",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        sinkhole.close()
        print(f"\nthe browser's requests beyond 127.0.0.1, all refused: {sinkhole.refused}")


@pytest.fixture(params=["aws", "gcp"])
def cloud(request: pytest.FixtureRequest) -> tuple[str, DevPipeline | GcpDevPipeline]:
    # Both are the package's; the GCP one starts only if asked.
    name = "dev_pipeline" if request.param == "aws" else "gcp_dev_pipeline"
    return request.param, request.getfixturevalue(name)


def card(driver: Any, name: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'.card[data-upload-name="{name}"]')


def statuses(driver: Any) -> dict[str, str]:
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('.card')]"
        ".map(c => [c.dataset.uploadName, c.dataset.status]))"
    )


def test_the_page_follows_a_photo_to_its_renditions_and_a_broken_file_to_failed(
    cloud: tuple[str, DevPipeline | GcpDevPipeline],
    browser: Any,
    corpus_photos: Path,
    tmp_path: Path,
) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    name, pipeline = cloud
    api_url = pipeline.outputs()[output_names.API_URL]
    photo = corpus_photos / PHOTO
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not an image, whatever its name says\n" * 20)

    browser.get(f"{api_url}/")
    assert browser.title.startswith("imagepipe"), browser.page_source[:300]
    started = time.monotonic()
    browser.find_element(By.ID, "file-input").send_keys(f"{photo}\n{broken}")

    expected = {PHOTO, "broken.jpg"}
    try:
        WebDriverWait(browser, PAGE_SECONDS, poll_frequency=0.2).until(
            lambda driver: (
                (seen := statuses(driver)).keys() == expected
                and all(status in FINAL for status in seen.values())
            )
        )
    except TimeoutException:
        pytest.fail(f"after {PAGE_SECONDS} s the cards are {statuses(browser)}", pytrace=False)
    seconds = time.monotonic() - started

    done = card(browser, PHOTO)
    assert done.get_attribute("data-status") == "COMPLETED", done.text
    assert re.search(r"\b\d+x\d+ JPEG\b", done.text), done.text
    assert "processed in" in done.text, done.text
    renditions = done.find_elements(By.CSS_SELECTOR, "img[data-rendition]")
    assert {img.get_attribute("data-rendition") for img in renditions} >= {"thumb"}, done.text
    for img in renditions:
        # Loaded from the CDN stand-in, at the size its caption (the record) says.
        WebDriverWait(browser, 10, poll_frequency=0.1).until(
            lambda driver, img=img: driver.execute_script("return arguments[0].complete", img)
        )
        width, height = browser.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img
        )
        figure = img.find_element(By.XPATH, "ancestor::figure")
        assert width > 0, f"{img.get_attribute('data-rendition')} did not load: {figure.text}"
        assert f"{width}x{height}" in figure.text, figure.text

    failed = card(browser, "broken.jpg")
    assert failed.get_attribute("data-status") == "FAILED", failed.text
    error = failed.find_element(By.CSS_SELECTOR, ".error").text
    assert error.split(":")[0] in ("corrupt_image", "unsupported_format"), error

    # The page fetched nothing from anywhere but the pipeline's own servers.
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert fetched, "the page fetched nothing at all"
    assert all(url.startswith("http://127.0.0.1:") for url in fetched), fetched

    problems = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Uncaught" in entry["message"] or "Content Security Policy" in entry["message"]
    ]
    assert not problems, problems

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(900, int(height)))
    browser.save_screenshot(str(SCREENSHOTS / f"upload-page-{name}.png"))
    browser.set_window_size(1280, 900)
    print(f"\n{name}: both cards final {seconds:.1f} s after the files were picked")
