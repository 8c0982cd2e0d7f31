"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven through selenium,
for pages the formula writes. Tests skip with the reason when either is missing."""

import contextlib
import os
import shutil

import pytest

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")


def require_browser():
    if not os.access(CHROMEDRIVER, os.X_OK) or not any(os.access(p, os.X_OK) for p in CHROMIUM):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/debian-packages)")
    pytest.importorskip("selenium", reason="needs selenium (the test extra)")


@contextlib.contextmanager
def chromium(width=1400, height=1000):
    """A WebDriver for a fresh headless Chromium with no network beyond what the page asks for."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(p for p in CHROMIUM if os.access(p, os.X_OK))
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver") or CHROMEDRIVER),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver, path, width=1400):
    """A PNG of the whole page at ``width`` CSS pixels (not only the window's viewport)."""
    height = driver.execute_script("return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": int(height), "deviceScaleFactor": 1, "mobile": False})
    try:
        if not driver.save_screenshot(str(path)):
            raise RuntimeError(f"no screenshot written to {path}")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path
