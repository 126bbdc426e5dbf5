"""Acceptance in a real browser: a person runs every strategy from the Prefect UI and looks at the plots.

A Prefect server + process worker (``prefect_server``) and SeaweedFS; the ``adapt`` deployment
registered with default parameters that train a tiny model on a small CSV. Headless Chromium
opens the deployments list, then the Custom-run form once per strategy tab (the form carries
the previous tab's fields over, which the server and the worker must accept), and submits.
Every run must complete and register a version; on one run's page, the evaluation plots
artifact must show an image (``naturalWidth > 0``) in the new UI (/v2) and the classic one (/).

Prefect 3.9.1's form picks the tab to display by the most fields in common with the value,
so after the TransferLearning defaults the PartialFineTuning and FullFineTuning choices are
shown under the TransferLearning tab (their Name field set to the choice): what counts, and
what is checked, is the strategy the run gets.

Screenshots go to ``<tmp>/ui-shots``, and to the folder ``ADAPTFLOW_UI_SHOTS`` names when set
(e.g. ``ADAPTFLOW_UI_SHOTS=/tmp/ui-shots``). Skipped when selenium, /usr/bin/chromium or
/usr/bin/chromedriver is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from adaptflow.infra.prefect_stack import PrefectStack
from adaptflow.tasks.config import load_config
from adaptflow.tasks.registry.store import list_versions
from tests.integration.conftest import served_worker_env, tiny_config, write_reviews
from tests.integration.prefect_rest import rest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
STRATEGY_TABS = {
    "TransferLearning": "transfer_learning",
    "PartialFineTuning": "partial_fine_tuning",
    "FullFineTuning": "full_fine_tuning",
    "Lora": "lora",
}
PAGE_WAIT_S = 45
RUNS_WAIT_S = 300
PLOTS_ARTIFACT = "evaluation-plots"
SERVER_BUSY = "Unknown error while creating flow run"
SUBMIT_ATTEMPTS = 3
SHOTS_ENV = "ADAPTFLOW_UI_SHOTS"
SCROLL_TO_CENTER = "arguments[0].scrollIntoView({block: 'center'}); return true"
SCROLL_TO_TOP = "arguments[0].scrollIntoView({block: 'start'}); return true"

_missing = [
    what
    for what, ok in (
        ("selenium (pip install -e '.[dev]')", importlib.util.find_spec("selenium") is not None),
        (str(CHROMIUM), CHROMIUM.exists()),
        (str(CHROMEDRIVER), CHROMEDRIVER.exists()),
    )
    if not ok
]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"browser test needs {', '.join(_missing)}")


@pytest.fixture
def prefect_server(s3_stack, s3_settings, tmp_path):
    """A Prefect server + process worker (S3 endpoint and keys only in the worker's environment)."""
    home = tmp_path / "home"
    stack = PrefectStack(home)
    info = stack.up(worker_env=served_worker_env(s3_stack, home, s3_settings.prefix), timeout=120)
    try:
        yield info, stack
    finally:
        stack.down()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


class Shots:
    """Numbered screenshots in the test's folder, copied to $ADAPTFLOW_UI_SHOTS when set."""

    def __init__(self, driver, folder: Path):
        self.driver, self.folder, self.saved = driver, folder, []
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> Path:
        path = self.folder / f"{len(self.saved) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.saved.append(path)
        return path

    def publish(self) -> None:
        if dest := os.environ.get(SHOTS_ENV):
            Path(dest).mkdir(parents=True, exist_ok=True)
            for path in self.saved:
                shutil.copy(path, Path(dest) / path.name)


def _api(info, method: str, path: str, **kwargs) -> httpx.Response:
    return rest(info.api_url, method, path, **kwargs)


def _diagnostics(info, stack: PrefectStack, run_id: str, state: str) -> str:
    logs = _api(info, "POST", "/logs/filter", json={"limit": 60, "logs": {"flow_run_id": {"any_": [run_id]}}}).json()
    worker_log = stack.worker_log.read_text(errors="replace")[-4000:] if stack.worker_log.exists() else "(no worker log)"
    lines = "\n".join(entry["message"][:500] for entry in logs)
    return f"flow run {run_id} ended {state}\n--- flow run logs ---\n{lines}\n--- worker log ---\n{worker_log}"


def _deploy_adapt(info, parameters: dict) -> str:
    """The ``adapt`` deployment with these default parameters, as ``prefect deploy`` would register it; returns its id."""
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    from adaptflow.flows.adapt import adapt

    if _api(info, "GET", f"/work_pools/{info.work_pool}").status_code == 404:  # the worker may not have created it yet
        created = _api(
            info,
            "POST",
            "/work_pools/",
            json={"name": info.work_pool, "type": "process", "base_job_template": ProcessWorker.get_default_base_job_template()},
        )
        assert created.status_code in (201, 409), created.text
    flow_id = _api(info, "POST", "/flows/", json={"name": adapt.name}).json()["id"]
    deployment = _api(
        info,
        "POST",
        "/deployments/",
        json={
            "name": "adapt",
            "flow_id": flow_id,
            "entrypoint": "flows/adapt.py:adapt",
            "parameters": parameters,
            "parameter_openapi_schema": parameter_schema(adapt).model_dump_for_openapi(),
            "enforce_parameter_schema": True,
            "work_pool_name": info.work_pool,
            "work_queue_name": "default",
            "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
        },
    )
    assert deployment.status_code in (200, 201), deployment.text
    return deployment.json()["id"]


def _run_ids(info, deployment_id: str) -> set[str]:
    runs = _api(info, "POST", "/flow_runs/filter", json={"limit": 50, "flow_runs": {"deployment_id": {"any_": [deployment_id]}}}).json()
    return {run["id"] for run in runs}


def _page_problems(driver) -> str:
    """What the page shows that looks like an error, and the browser console."""
    lines = driver.find_element("tag name", "body").text.splitlines()
    shown = [line[:400] for line in lines if "alid" in line or "rror" in line]
    console = [entry["message"][:400] for entry in driver.get_log("browser") if "amplitude" not in entry["message"]]
    return "\n".join(["shown:", *shown, "console:", *console])


def _waiter(driver):
    """A wait that looks again when the element it holds was re-rendered (the UI redraws as data arrives)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, PAGE_WAIT_S, ignored_exceptions=(StaleElementReferenceException,))


def _click(wait, xpath: str):
    """Scroll the element at ``xpath`` into view and click it once it is clickable; found afresh if it was redrawn meanwhile."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    def clicked(driver):
        element = EC.element_to_be_clickable((By.XPATH, xpath))(driver)
        if not element:
            return False
        driver.execute_script(SCROLL_TO_CENTER, element)
        element.click()
        return element

    return wait.until(clicked)


def _submit_with_tab(driver, ui: str, deployment_id: str, tab: str, strategy: str, model_dir: str, shots: Shots) -> int:
    """Open the Custom-run form, choose the strategy tab, submit; returns the server's refusals clicked through.

    The form is ready once it shows the deployment's parameters (the model folder): a tab
    chosen before that would be reset. The tab took once the strategy's Name field holds its
    name, which is what is submitted. (Prefect 3.9.1's form then shows the tab whose fields
    overlap the value most: after the TransferLearning defaults, PartialFineTuning and
    FullFineTuning are displayed under the TransferLearning tab, Name showing the chosen one.)
    The Prefect server answers 503 when SQLite is busy, which the UI shows as "Unknown error
    while creating flow run." without retrying; a person clicks Submit again, and so does
    this (at most ``SUBMIT_ATTEMPTS`` times, reported).
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By

    wait = _waiter(driver)
    driver.get(f"{ui}/v2/deployments/deployment/{deployment_id}/run")
    shows = "return Array.from(document.querySelectorAll('textarea, input')).some(e => e.value === arguments[0])"
    wait.until(lambda d: d.execute_script(shows, model_dir))
    tab_xpath = f"//button[@role='tab' and normalize-space()='{tab}']"

    def chosen(d) -> bool:
        if d.execute_script(shows, strategy):
            return True
        button = d.find_element(By.XPATH, tab_xpath)
        d.execute_script(SCROLL_TO_CENTER, button)
        button.click()
        return False

    wait.until(chosen)
    if tab == "Lora":  # the Lora tab shows its own fields
        wait.until(lambda d: d.find_element(By.XPATH, tab_xpath).get_attribute("aria-selected") == "true")
    if tab in ("PartialFineTuning", "Lora"):
        wait.until(lambda d: d.execute_script(SCROLL_TO_TOP, d.find_element(By.XPATH, tab_xpath)))
        shots.take(f"form-{tab.lower()}-chosen")
    for attempt in range(SUBMIT_ATTEMPTS):
        _click(wait, "//button[@type='submit' and normalize-space()='Submit']")
        try:
            outcome = wait.until(
                lambda d: (
                    "created"
                    if not d.current_url.split("?")[0].endswith("/run")  # the UI moves to the deployment's runs
                    else "busy"
                    if SERVER_BUSY in d.find_element(By.TAG_NAME, "body").text
                    else None
                )
            )
        except TimeoutException:
            break
        if outcome == "created":
            return attempt
        wait.until(lambda d: SERVER_BUSY not in d.find_element(By.TAG_NAME, "body").text)  # the toast goes
    shots.take(f"form-{tab}-refused")
    pytest.fail(f"the {tab} form was not accepted:\n{_page_problems(driver)}")


def _wait_for_runs(info, stack, run_ids: list[str]) -> dict[str, dict]:
    """Poll the API until every run is final; returns the runs by id."""
    deadline = time.monotonic() + RUNS_WAIT_S
    runs: dict[str, dict] = {}
    while time.monotonic() < deadline:
        runs = {r: _api(info, "GET", f"/flow_runs/{r}").json() for r in run_ids}
        if all(run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for run in runs.values()):
            return runs
        if not stack.worker_running(info):
            break
        time.sleep(1)
    return runs


def _loaded_image(driver):
    """An embedded PNG of the page that the browser has decoded (naturalWidth > 0), or None yet."""
    return driver.execute_script(
        "return Array.from(document.images).find(i => i.src.startsWith('data:image/png') && i.complete && i.naturalWidth > 0) || null"
    )


def test_every_strategy_runs_from_the_ui_form_and_the_plots_show(prefect_server, browser, s3_settings, tiny_bert_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    info, stack = prefect_server
    ui = info.ui_url
    timings: dict[str, float] = {}
    started = time.monotonic()
    data = write_reviews(tmp_path / "reviews.csv", rows=60, seed=5)
    defaults = tiny_config(tiny_bert_dir, data, tmp_path / "work", strategy={"name": "transfer_learning"})
    deployment_id = _deploy_adapt(info, {"config": defaults})
    timings["deploy"] = time.monotonic() - started

    shots = Shots(browser, tmp_path / "ui-shots")
    wait = _waiter(browser)
    try:
        browser.get(f"{ui}/v2/deployments")
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"a[href$='/deployments/deployment/{deployment_id}']")))
        shots.take("deployments-list")

        mark = time.monotonic()
        run_ids: dict[str, str] = {}
        refusals = 0
        for tab, strategy in STRATEGY_TABS.items():
            before = _run_ids(info, deployment_id)
            refusals += _submit_with_tab(browser, ui, deployment_id, tab, strategy, str(tiny_bert_dir), shots)
            (new,) = _run_ids(info, deployment_id) - before
            run_ids[strategy] = new
        timings["four forms submitted"] = time.monotonic() - mark
        print(f"submits refused by a busy server (503) and clicked again: {refusals}")
        for strategy, run_id in run_ids.items():
            submitted = _api(info, "GET", f"/flow_runs/{run_id}").json()["parameters"]["config"]["strategy"]
            assert submitted["name"] == strategy, submitted

        mark = time.monotonic()
        runs = _wait_for_runs(info, stack, list(run_ids.values()))
        timings["four runs completed"] = time.monotonic() - mark
        for strategy, run_id in run_ids.items():
            state = runs[run_id]["state"]["type"]
            assert state == "COMPLETED", _diagnostics(info, stack, run_id, f"{state} ({strategy})")
            name = load_config({**defaults, "strategy": {"name": strategy}}).model_name()
            assert [v.version for v in list_versions(s3_settings, name)] == [1], name

        mark = time.monotonic()
        run_id = run_ids["lora"]
        browser.get(f"{ui}/v2/runs/flow-run/{run_id}")
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "Completed"))
        shots.take("run-completed")
        _click(wait, "//button[@role='tab' and normalize-space()='Artifacts']")
        card_xpath = f"//a[contains(@href, '/artifacts/artifact/') and contains(., '{PLOTS_ARTIFACT}')]"
        wait.until(lambda d: d.execute_script(SCROLL_TO_CENTER, d.find_element(By.XPATH, card_xpath)))
        shots.take("run-artifacts")
        artifact_url = wait.until(lambda d: d.find_element(By.XPATH, card_xpath).get_attribute("href"))
        _click(wait, card_xpath)
        wait.until(EC.url_contains("/artifacts/artifact/"))  # not an image still on the run page
        wait.until(lambda d: (image := _loaded_image(d)) and d.execute_script(SCROLL_TO_TOP, image))
        shots.take("artifact-plots-v2")

        browser.get(artifact_url.replace("/v2/", "/"))  # the classic UI renders the same markdown
        wait.until(_loaded_image)
        shots.take("artifact-plots-v1")
        timings["run page and artifact"] = time.monotonic() - mark
    except BaseException:
        shots.take("failure")
        raise
    finally:
        shots.publish()
    timings["total"] = time.monotonic() - started
    print("timings: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items()))
    print("screenshots: " + ", ".join(str(path) for path in shots.saved))
