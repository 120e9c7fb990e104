"""Headless Chromium (Debian's), by default with software WebGL (SwiftShader), for the browser tests and benchmark."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# no GPU on a test machine: ANGLE on SwiftShader gives WebGL in software
FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
         "--enable-unsafe-swiftshader", "--disable-background-networking", "--no-first-run",
         "--disable-extensions", "--mute-audio",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")  # fmt: skip  # offline: a remote resource fails loudly


@contextmanager
def chromium(width: int = 1200, height: int = 800, flags: tuple[str, ...] = FLAGS, page_load_timeout: float = 120):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    profile = tempfile.mkdtemp(prefix="vsig-map-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in (*flags, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(page_load_timeout)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script: str, timeout: float = 60.0):
    """Poll a JavaScript expression until it is truthy; its value, or AssertionError naming it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {script}")


def severe(driver) -> list[dict]:
    """Console errors (an uncaught exception, a failed resource), ignoring the renderer's own chatter."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
