"""The rater page in a real headless Chromium (Selenium), against a real `bentoml serve` of the tiny model.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when run as root);
skipped with an install hint elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from components.data.feedback.io import read_feedback
from components.data.served_store import export_feedback, open_store
from components.decide import canary
from tests.serving.server import TOKEN, make_project, register_candidate, start_server

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
    project = make_project(tmp_path_factory.mktemp("page-project"), reload_poll_seconds=0.3)
    register_candidate(project)  # champion base-tiny; candidate policy-2, served only once put on canary
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
    assert driver.find_element(By.ID, "chat-version").text == "base-tiny"
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


def _served_versions(server) -> list[str]:
    import httpx

    return [m["id"] for m in httpx.get(server.url + "/v1/models", timeout=30).json()["data"]]


@pytest.mark.slow
def test_people_compare_champion_and_candidate_blind_and_the_gate_decides_on_their_choices(page_server, browser):
    import concurrent.futures

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from components.config.gate import GateConfig
    from components.config.judges import HumanJudgeConfig
    from components.decide.evaluation import EvalResult, ModelEval
    from components.decide.gate import gate
    from components.decide.judges.human import await_human_verdict, human_evaluation
    from components.project.paths import ProjectPaths
    from components.records import registry

    driver, paths = browser, ProjectPaths(page_server.project)
    url = str(page_server.project / "live" / "served.sqlite")
    store = open_store(url)
    champion = _served_versions(page_server)[0]
    wait = {"candidate": "policy-2", "champion": champion, "store_url": url, "resamples": 200}

    # 1. nobody compares before a short deadline: no decision, the candidate leaves canary, nothing promoted
    short = HumanJudgeConfig(comparisons=3, deadline_s=2.0, poll_s=0.5, canary_share=0.5)
    none = await_human_verdict(short, paths, **wait)
    assert not none.decided and none.tally.comparisons == 0 and "champion stays" in none.reason
    assert registry.champion(paths).version == champion and registry.get(paths, "policy-2").status == "candidate"
    _wait(driver, lambda d: _served_versions(page_server) == [champion], timeout=20)

    # 2. the judge waits while raters compare on the page: blind, random order, and they prefer the candidate
    cfg = HumanJudgeConfig(comparisons=3, deadline_s=600, poll_s=0.3, canary_share=0.5)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(await_human_verdict, cfg, paths, **wait)
        _wait(driver, lambda d: "policy-2" in _served_versions(page_server))  # the service picked up the canary
        driver.get(page_server.url + "/rate")
        _enter_token(driver, TOKEN)
        driver.find_element(By.ID, "tab-compare").click()
        seen = set()
        for i in range(3):
            field = driver.find_element(By.ID, "compare-prompt")
            field.clear()
            field.send_keys(f"Where is parcel number {i}?" + Keys.ENTER)
            fresh = frozenset(seen | {None})
            _wait(
                driver, lambda d, old=fresh: d.find_element(By.ID, "compare-replies").get_attribute("data-a") not in old
            )
            replies = driver.find_element(By.ID, "compare-replies")
            a_id, b_id = replies.get_attribute("data-a"), replies.get_attribute("data-b")
            seen |= {a_id, b_id}
            assert "policy-2" not in replies.text and champion not in replies.text  # blind
            assert {store.get(a_id).model_version, store.get(b_id).model_version} == {champion, "policy-2"}
            _press(driver, "a" if store.get(a_id).model_version == "policy-2" else "b")
            _wait(driver, _text_contains("status", "is better: saved"))
        verdict = pending.result(timeout=120)
    assert verdict.decided and (verdict.tally.comparisons, verdict.tally.wins) == (3, 3)
    assert canary.read_assignment(paths) is None  # off canary once decided

    # 3. the same gate decides on their choices (the offline figures: KL, degenerate replies, reward model)
    side = {"judge_score": None, "reward_score": 0.0, "mean_tokens": 8.0, "eos_rate": 1.0, "degenerate_rate": 0.0}
    offline = EvalResult(
        candidate=ModelEval("policy-2", kl=0.5, **side),
        champion=ModelEval(champion, **side),
        candidate_path="",
        prompts=8,
        samples_per_prompt=1,
        win_rate=0.5,
        win_rate_low=0.3,
        win_rate_high=0.7,
        interval="",
        wins=0,
        ties=8,
        losses=0,
        overoptimised=False,
        reward_version=None,
        reward_accuracy=0.7,
        kl_target=None,
        metrics_path="",
        report_path="",
        reward_win_rate=0.6,
    )
    decided = gate(GateConfig(decide_on="lower_bound"), paths, evaluation=human_evaluation(offline, verdict))
    win = next(c for c in decided.checks if c.name.startswith("win rate by human"))
    assert win.passed and win.value == 1.0 and decided.passed and decided.judge == "human"
    store.close()
