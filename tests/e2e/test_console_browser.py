"""The console in headless Chromium (Selenium with Debian's chromium-driver), against a real
``workerpool up``: its one-time admin login, the seed's screens, a worker started from the CLI, a
live log, a cancel and the built-in worker's switch.

Each flow saves a screenshot; ``WORKERPOOL_SCREENSHOTS=docs`` keeps them in ``docs/console/``.
Every wait is on a condition in the page (WebDriverWait), never a fixed sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import shared_file, start_up
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

SEED_POOLS = {"Kubernetes Worker Pool": "Workers with kubectl and helm",
              "Azure Worker Pool": "Workers with the Azure CLI",
              "Database Worker Pool": "Workers with sqlcmd, near the database servers"}
SECRET = "browser-s3cret-never-shown"
READY = re.compile(r"console login: admin / (\S+) .*", re.S)
CONSOLE = re.compile(r"console on (http://\S+)")


def _chrome() -> WebDriver:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("chromium or chromedriver is not installed; `make test` installs Debian's "
                    "chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


@dataclass
class Console:
    """A browser on the console of a running ``workerpool up``."""

    browser: WebDriver
    url: str
    password: str
    shots: Path

    def open(self, path: str) -> None:
        self.browser.get(self.url + path)

    def wait(self, condition: Callable[[WebDriver], object], timeout: float = 30,
             ignoring: tuple[type[Exception], ...] = ()) -> object:
        """*condition*'s first true value (*ignoring* those errors while it is asked); on a
        timeout, the page it was waiting on."""
        try:
            return WebDriverWait(self.browser, timeout,
                                 ignored_exceptions=ignoring).until(condition)
        except TimeoutException:
            body = self.browser.find_element(By.TAG_NAME, "body").text
            raise AssertionError(f"timed out on {self.browser.current_url}:\n{body[:3000]}"
                                 ) from None

    def find(self, css: str) -> WebElement:
        return self.browser.find_element(By.CSS_SELECTOR, css)

    def visible(self, css: str, timeout: float = 30) -> WebElement:
        found = self.wait(ec.visibility_of_element_located((By.CSS_SELECTOR, css)), timeout)
        assert isinstance(found, WebElement)
        return found

    def text_of(self, css: str, text: str, timeout: float = 30) -> None:
        """Wait until the element at *css* shows *text*."""
        self.wait(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text), timeout)

    def submit(self, css: str) -> None:
        """Click the button at *css* and wait until the page it leads to replaced this one and
        ran its script (a click does not wait for the navigation it starts)."""
        self.leaving()
        self.find(css).click()
        self.loaded()

    def leaving(self) -> None:
        """Mark this page's window: the next page's is a new one, without the mark."""
        self.browser.execute_script("window.workerpoolLeft = true")

    def loaded(self) -> None:
        """Wait for a page after the one marked by ``leaving`` to be complete. Asked while the
        browser navigates, the driver may answer with an error (a node or document gone)
        rather than a value: asked again then."""
        self.wait(lambda b: b.execute_script(
            "return !window.workerpoolLeft && document.readyState === 'complete'"),
            ignoring=(WebDriverException,))

    def type(self, css: str, text: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def log_in(self) -> None:
        self.open("/")
        self.visible("#password")
        self.type("#name", "admin")
        self.type("#password", self.password)
        self.submit("#login")
        self.text_of("#user", "admin (admin)")

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}.png"
        assert self.browser.save_screenshot(str(path)), name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        keep = os.environ.get("WORKERPOOL_SCREENSHOTS")
        if keep:
            folder = Path(keep) / "console"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.name)

    def reload_until(self, css: str, timeout: float = 60) -> WebElement:
        """Reload the page until an element at *css* is on it (a page shows what was true when
        it was served; the pools' pages have no live updates)."""
        def present(browser: WebDriver) -> WebElement | bool:
            found = browser.find_elements(By.CSS_SELECTOR, css)
            if found:
                return found[0]
            browser.refresh()
            return False
        found = self.wait(present, timeout)
        assert isinstance(found, WebElement)
        return found

    def run(self, pool: str, name: str, script: str, sensitive: str = "") -> str:
        """Fill in Run a script and submit it; the new step's id (its page is open)."""
        self.open("/run")
        Select(self.visible("#run-pool")).select_by_visible_text(pool)
        self.type("#run-name", name)
        self.type("#run-script", script)
        if sensitive:
            self.type("#run-sensitive", sensitive)
        self.submit("#run")
        assert "/steps/" in self.browser.current_url, self.browser.current_url
        return self.browser.current_url.rsplit("/steps/", 1)[1]


@pytest.fixture
def console(env: dict[str, str], tmp_path: Path) -> Iterator[Console]:
    """``workerpool up`` on the test's Redis, and a browser logged in with the one-time admin
    password it printed."""
    up, printed = start_up([sys.executable, "-m", "workerpool", "up"], env)
    browser = None
    try:
        password, url = READY.search(printed), CONSOLE.search(printed)
        assert password and url, printed
        browser = _chrome()
        shots = tmp_path / "shots"
        shots.mkdir()
        yield Console(browser, url.group(1).rstrip("/"), password.group(1), shots)
    finally:
        if browser is not None:
            browser.quit()
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def test_log_in_add_the_seeds_pools_describe_them_and_the_default_pool_cannot_go(console):
    console.open("/")
    console.visible("#password")
    console.shot("01-log-in")
    console.type("#name", "admin")
    console.type("#password", "not-the-password")
    console.submit("#login")
    console.text_of("#error", "wrong name or password")
    console.log_in()
    console.text_of("#pools", "Default Worker Pool")

    for name in SEED_POOLS:
        console.open("/")
        console.visible("#add-pool").click()
        console.visible("#pool-name").send_keys(name)
        slug = name.lower().replace(" ", "-")
        console.text_of("#pool-slug", slug)  # the slug, previewed as the name is typed
        if name == "Database Worker Pool":
            console.shot("02-add-worker-pool")
        console.submit("#save-pool")
        assert console.browser.current_url.endswith(f"/pools/{slug}")
        console.type("#description", SEED_POOLS[name])
        if name == "Database Worker Pool":
            console.shot("03-pool-form")
        console.submit("#save")
        assert console.find("#description").get_attribute("value") == SEED_POOLS[name]

    console.open("/")
    console.visible("#add-pool").click()
    console.visible("#pool-name").send_keys("database worker pool")
    console.submit("#save-pool")
    console.text_of("#add-error", "already")  # refused inline, in the dialog, reopened
    assert console.find("#add-dialog").is_displayed()

    console.open("/")
    for name, description in SEED_POOLS.items():
        row = console.find(f"#pool-{name.lower().replace(' ', '-')}")
        assert name in row.text and row.find_element(By.CSS_SELECTOR, ".description").text \
            == description
    console.shot("04-worker-pools")

    console.open("/pools/default-worker-pool")
    console.leaving()
    console.visible("#remove").click()
    console.wait(ec.alert_is_present()).accept()  # type: ignore[attr-defined]
    console.loaded()
    console.text_of("#error", "is the default pool and cannot be removed")
    assert "Default Worker Pool" in console.find("h1").text
    console.shot("05-remove-default-refused")


def test_a_worker_started_from_the_cli_appears_and_runs_a_script_with_a_live_log(
        console, client, start_worker, tmp_path):
    console.log_in()
    client.pools.add("Database Worker Pool", description=SEED_POOLS["Database Worker Pool"])
    worker = start_worker("Database Worker Pool")
    console.open("/pools/database-worker-pool")
    row = console.reload_until(f"#worker-{worker.name}")
    assert "Healthy" in row.text
    console.shot("06-worker-appears")

    gate = tmp_path / "gate"
    step = console.run("Database Worker Pool", "Migrate orders",
                       "echo migrating with $DbPassword\n"
                       f"while [ ! -e {gate} ]; do sleep 0.05; done\necho migrated",
                       sensitive=f"DbPassword={SECRET}")
    console.text_of("#log", "migrating with")  # a line while the step still runs
    console.text_of("#step-state", "Running")  # the state, sent as it changes
    assert "migrated" not in console.find("#log").text
    console.shot("07-live-log")
    shared_file(gate)
    console.text_of("#log", "migrated", 60)
    console.text_of("#step-state", "Success")
    assert SECRET not in console.browser.page_source
    console.open(f"/steps/{step}")
    console.text_of("#step-state", "Success")
    console.text_of("#log-status", "ended: Success")
    assert SECRET not in console.browser.page_source
    console.shot("08-step-ended")


def test_cancel_a_running_step(console, client, start_worker):
    console.log_in()
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool")
    console.run("Database Worker Pool", "Long migration", "echo waiting\nsleep 600")
    console.text_of("#log", "waiting")
    console.shot("09-cancel-running-step")
    console.submit("#cancel")
    console.text_of("#step-state", "Cancelled", 60)
    console.text_of("#log-status", "ended: Cancelled")


def test_disable_the_builtin_worker_and_a_default_pool_step_is_refused(console, client):
    console.log_in()
    console.open("/builtin")
    console.text_of("#builtin-state", "Enabled")
    console.visible("#disable").click()
    console.text_of("#warning", "Only do this after you have added worker pools")
    console.shot("10-disable-builtin-warning")
    console.submit("#confirm-disable")
    console.text_of("#builtin-state", "Disabled")
    assert not client.builtin.enabled()

    console.open("/run")
    Select(console.visible("#run-pool")).select_by_visible_text("Default pool")
    console.type("#run-script", "echo on the default pool")
    console.submit("#run")
    console.text_of("#error", "built-in worker is disabled")
    console.shot("11-default-pool-step-refused")
    assert console.browser.current_url.endswith("/run")
