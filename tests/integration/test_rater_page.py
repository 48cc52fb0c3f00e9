"""The rater page in a real headless Chromium (Selenium), against a real `bentoml serve` of the tiny model.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when run as root);
skipped with an install hint elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from components.feedback.io import read_feedback
from components.served_store import export_feedback, open_store
from tests.serving.server import TOKEN, make_project, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver: `sudo apt-get install -y chromium chromium-driver` (Debian/Ubuntu), "
    "or run `make test` as root",
)

WAIT = 60


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("page-project"), reload_poll_seconds=0.0)
    server = start_server(project)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1100,950",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _text_contains(element_id: str, text: str):
    from selenium.webdriver.common.by import By

    def check(driver):
        el = driver.find_element(By.ID, element_id)
        return el.is_displayed() and text in el.text

    return check


def _visible(element_id: str):
    from selenium.webdriver.common.by import By

    return lambda driver: driver.find_element(By.ID, element_id).is_displayed()


def _press(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def _enter_token(driver, token: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token + Keys.ENTER)
    _wait(driver, _text_contains("status", "Token saved"))


@pytest.mark.slow
def test_chat_rate_compare_and_clear_the_queue_with_the_keyboard(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    store = open_store(page_server.project / "live" / "served.sqlite")
    driver.get(page_server.url + "/rate")
    assert "Rate the model" in driver.title + driver.find_element(By.TAG_NAME, "h1").text

    # 1. a wrong token: the reply comes (no token needed), the rating is refused in words
    _enter_token(driver, "not-the-token")
    driver.find_element(By.ID, "chat-prompt").send_keys("My parcel arrived damaged." + Keys.ENTER)
    _wait(driver, _visible("chat-reply"))
    served_id = driver.find_element(By.ID, "chat-reply").get_attribute("data-id")
    assert driver.find_element(By.ID, "chat-version").text == "base:tiny"
    _press(driver, "4")  # focus is on the reply: 4 rates it
    _wait(driver, _text_contains("message", "401"))
    assert "RLHF_API_TOKEN" in driver.find_element(By.ID, "message").text
    assert store.ratings_of(served_id) == []
    assert "not-the-token" not in driver.current_url

    # 2. the right token, a comment, then the 4 key: stored with the comment
    _enter_token(driver, TOKEN)
    driver.find_element(By.ID, "chat-comment").send_keys("polite but vague")
    driver.find_element(By.ID, "chat-reply").click()
    _press(driver, "4")
    _wait(driver, _text_contains("status", "Rating 4 saved"))
    assert not driver.find_element(By.ID, "message").is_displayed()
    assert [(r["rating"], r["comment"]) for r in store.ratings_of(served_id)] == [(4, "polite but vague")]
    shot = tmp_path / "rater-page.png"
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("RLHF_SCREENSHOT_DIR"):
        target = Path(os.environ["RLHF_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target / "rater-page.png")

    # 3. compare: arrow key to the tab, Enter sends, b chooses reply B
    tab = driver.find_element(By.ID, "tab-chat")
    tab.send_keys(Keys.ARROW_RIGHT)
    assert driver.switch_to.active_element.get_attribute("id") == "tab-compare"
    driver.find_element(By.ID, "compare-prompt").send_keys("How do I reset my password?" + Keys.ENTER)
    _wait(driver, _visible("compare-replies"))
    replies = driver.find_element(By.ID, "compare-replies")
    a_id, b_id = replies.get_attribute("data-a"), replies.get_attribute("data-b")
    assert a_id != b_id
    _press(driver, "b")
    _wait(driver, _text_contains("status", "Reply B is better: saved"))
    assert [(p["chosen_id"], p["rejected_id"], p["tie"]) for p in store.all_pairs()] == [(b_id, a_id, False)]

    # 4. review queue: rate every unrated output (the three above are still unrated) until it is clear
    unrated_before = store.unrated(limit=1)[1]
    assert unrated_before == 2  # the two compared replies; the chat reply is rated
    driver.find_element(By.ID, "tab-queue").click()
    for _ in range(unrated_before):
        _wait(driver, _visible("queue-item"))
        current = driver.find_element(By.ID, "queue-item").get_attribute("data-id")
        _press(driver, "2")
        _wait(driver, lambda d, c=current: d.find_element(By.ID, "queue-item").get_attribute("data-id") != c)
    _wait(driver, _text_contains("queue-count", "The queue is clear"))
    assert store.unrated(limit=1)[1] == 0

    # 5. what the page recorded goes out through the same export as the API's feedback
    result = export_feedback(store, tmp_path / "export")
    ratings = read_feedback(result.ratings_path).frame
    pairs = read_feedback(result.pairs_path).frame
    assert set(ratings["served_id"]) == {served_id, a_id, b_id}
    assert ratings.set_index("served_id").loc[served_id, "rating"] == 4
    assert (pairs["chosen_id"].tolist(), pairs["rejected_id"].tolist()) == ([b_id], [a_id])
    store.close()
