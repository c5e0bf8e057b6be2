"""Headless Chromium driven by Selenium, for the console's browser tests.

Debian's ``chromium`` and ``chromium-driver`` packages; a missing browser fails the test (the CI
installs both). Each browser gets a new empty profile directory and is quit by the context manager.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Seconds a page gets to show what a test waits for (the console polls nothing it is not asked to).
PATIENCE = 20


@contextlib.contextmanager
def chromium(*, insecure_certs: bool = False) -> Iterator[webdriver.Chrome]:
    """A headless Chromium; ``insecure_certs`` accepts a test CA's self-signed certificate."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert path.exists(), f"{path} is missing: install the chromium and chromium-driver packages"
    profile = tempfile.mkdtemp(prefix="xatm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.accept_insecure_certs = insecure_certs
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


#: True once the console has drawn the view its address asks for (``<body data-shown>``; ``#`` for
#: the sign-in page, whatever the address): an element found before then may be replaced by that
#: view's drawing a moment later.
SETTLED = (
    "const shown = document.body.dataset.shown;"
    "const signIn = !document.getElementById('page-signin').hidden;"
    "return shown === (location.hash || '#') || (shown === '#' && signIn);"
)


def settled(driver: webdriver.Chrome) -> None:
    """Wait until the console has drawn the view its current address asks for."""
    WebDriverWait(driver, PATIENCE).until(
        lambda d: d.execute_script(SETTLED),
        f"the console never drew its view; page log: {_log(driver)}",
    )


def wait_for(driver: webdriver.Chrome, element_id: str, *, text: str = "") -> WebElement:
    """The visible element ``element_id`` once the page has settled (:func:`settled`) and the
    element shows (and contains ``text``, if given)."""
    settled(driver)
    wait = WebDriverWait(driver, PATIENCE)
    found = wait.until(
        ready.visibility_of_element_located((By.ID, element_id)), f"#{element_id} never showed"
    )
    if text:
        with contextlib.suppress(TimeoutException):
            wait.until(ready.text_to_be_present_in_element((By.ID, element_id), text))
        shown = driver.find_element(By.ID, element_id).text
        assert text in shown, f"#{element_id} shows {shown!r}, not {text!r}; page log: {_log(driver)}"
    return found


def _log(driver: webdriver.Chrome) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")]


def sign_in(driver: webdriver.Chrome, base: str, token: str) -> None:
    """Open the console and submit ``token`` on its sign-in page."""
    driver.get(base + "/console")
    wait_for(driver, "token").send_keys(token)
    driver.find_element(By.ID, "signin").click()
