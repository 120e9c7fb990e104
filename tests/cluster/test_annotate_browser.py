"""The annotation page in a real headless Chromium (Debian's `chromium` + `chromium-driver`).

One browser session drives everything: ticking by click and by number keys, deciding by button and
by letter, an error shown for an impossible decision, undo, and a server restart that resumes at
the next cluster. Set VSIG_SCREENSHOT_DIR to also keep the page's screenshot (docs/img/annotate.png
is made that way).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from cluster.annotate.app import create_app
from tests.cluster.conftest import EXPECTED_QUEUE
from tests.cluster.map_browser import chromium

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
)


class Server:
    """The real app on a free loopback port, served by werkzeug in a thread."""

    def __init__(self, coll, annotator="ada", **app_options):
        app = create_app(coll.root, coll.clusters, annotator, **app_options)
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with chromium(1400, 1000, flags=FLAGS, page_load_timeout=30) as driver:
        yield driver


def _records(coll):
    return [json.loads(x) for x in (coll.root / "annotations.jsonl").read_text().splitlines()]


def _text(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css).text


def _wait(driver, cond, what, timeout=15):
    # the page re-renders after each reply: an element found a moment ago may be gone
    wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))
    return wait.until(lambda d: cond(d), message=what)


def _wait_cluster(driver, cid):
    _wait(driver, lambda d: _text(d, "#cluster-head h2") == f"Cluster {cid}", f"cluster {cid} shown")


@contextlib.contextmanager
def opened(driver, collection, first_cluster: int = 2, **server_options):
    """The app on `collection` (Server's options), its page open in `driver` at its first cluster; stopped after."""
    server = Server(collection, **server_options)
    try:
        driver.get(server.url)
        _wait_cluster(driver, first_cluster)
        yield server
    finally:
        server.stop()


def _key(driver, key):
    driver.find_element(By.TAG_NAME, "body").send_keys(key)


def _uid_of(driver, n):
    return driver.find_element(By.ID, f"card-{n}").get_attribute("data-uid")


@pytest.mark.slow
def test_click_through_decisions_undo_and_resume(browser, annot_collection, tmp_path):
    d = browser
    server = Server(annot_collection)
    try:
        d.get(server.url)
        _wait_cluster(d, EXPECTED_QUEUE[0])
        assert _text(d, "#progress-text") == "0 done · 4 left"
        cards = d.find_elements(By.CSS_SELECTOR, ".card")
        assert len(cards) == 6
        _wait(d, lambda d: d.execute_script(
            "return [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"),
            "all thumbnails loaded")
        # known links are visible: three badges pairs -> six badges, and the list below the grid
        assert len(d.find_elements(By.CSS_SELECTOR, ".card .badge")) == 6
        assert "Already connected" in _text(d, "#links")

        # tick members 1 and 3 by clicking their labels
        d.find_element(By.CSS_SELECTOR, "label[for='tick-1']").click()
        d.find_element(By.CSS_SELECTOR, "label[for='tick-3']").click()
        assert "ticked" in d.find_element(By.ID, "card-1").get_attribute("class")
        ticked = [_uid_of(d, 1), _uid_of(d, 3)]
        shot = tmp_path / "annotate.png"
        d.save_screenshot(str(shot))
        with Image.open(shot) as im:
            assert im.size[0] >= 1000 and sum(1 for h in im.convert("L").histogram() if h) > 50  # a real rendered page
        if os.environ.get("VSIG_SCREENSHOT_DIR"):
            out = Path(os.environ["VSIG_SCREENSHOT_DIR"])
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, out / "annotate.png")

        d.find_element(By.CSS_SELECTOR, "button[data-decision='confirm']").click()
        _wait_cluster(d, EXPECTED_QUEUE[1])
        assert _text(d, "#progress-text") == "1 done · 3 left"
        assert "Saved" in _text(d, "#message")
        rec = _records(annot_collection)[-1]
        assert rec["decision"] == "confirm" and rec["cluster"] == EXPECTED_QUEUE[0]
        assert rec["ticked"] == ticked and rec["edges"] == [[*sorted(ticked), "POSITIVE"]]

        # keyboard: an impossible decision shows an error and writes nothing
        _key(d, "c")
        _wait(d, lambda d: "at least two" in _text(d, "#message"), "error message shown")
        assert len(_records(annot_collection)) == 1
        # keyboard: tick 1 and 2, then "s" = similar
        _key(d, "1")
        _key(d, "2")
        ticked = [_uid_of(d, 1), _uid_of(d, 2)]
        _key(d, "s")
        _wait_cluster(d, EXPECTED_QUEUE[2])
        rec = _records(annot_collection)[-1]
        assert rec["decision"] == "similar" and rec["edges"] == [[*sorted(ticked), "SIMILAR"]]

        # undo with "u": the cluster comes back, the log gets an undo record
        _key(d, "u")
        _wait_cluster(d, EXPECTED_QUEUE[1])
        assert _text(d, "#progress-text") == "1 done · 3 left"
        last = _records(annot_collection)[-1]
        assert last["kind"] == "undo" and last["undoes"] == rec["id"]
        # "w" = wrong cluster, with nothing ticked
        _key(d, "w")
        _wait_cluster(d, EXPECTED_QUEUE[2])
        assert _records(annot_collection)[-1]["decision"] == "wrong"
    finally:
        server.stop()

    # restart: a new server on the same folder resumes at the next cluster
    server = Server(annot_collection)
    try:
        d.get(server.url)
        _wait_cluster(d, EXPECTED_QUEUE[2])
        assert _text(d, "#progress-text") == "2 done · 2 left"
        # "#cluster=ID" opens one cluster (the map links here): a decided one is shown read-only
        d.get(server.url + f"#cluster={EXPECTED_QUEUE[0]}")
        _wait_cluster(d, EXPECTED_QUEUE[0])
        assert "already decided: Confirm pattern" in _text(d, "#cluster-head")  # named as its button
        assert not d.find_element(By.CSS_SELECTOR, "button[data-decision='skip']").is_enabled()
        d.find_element(By.CSS_SELECTOR, "#cluster-head a.back").click()
        _wait_cluster(d, EXPECTED_QUEUE[2])
        # finish with the buttons; the page says everything is reviewed
        for cid in EXPECTED_QUEUE[2:]:
            _wait_cluster(d, cid)
            d.find_element(By.CSS_SELECTOR, "button[data-decision='skip']").click()
        _wait(d, lambda d: d.find_element(By.ID, "finished").is_displayed(), "finished panel shown")
        assert _text(d, "#progress-text") == "4 done · 0 left"
    finally:
        server.stop()
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    # the only expected console errors are the 400s of the impossible decision
    assert all("400" in e["message"] for e in severe), severe


@pytest.mark.slow
def test_a_big_cluster_page_by_page_select_all_and_a_proposal_from_the_map(browser, annot_collection, tmp_path):
    """130 members in pages of 60: number keys tick the visible page, ticks survive paging, select all, a decision
    sent as 'all but one'; then `#propose=<uids>` asks, queues the selection and opens it."""
    from urllib.parse import quote

    from selenium.webdriver.support import expected_conditions as ec

    from tests.cluster.test_annotate_scale import big_collection

    root = tmp_path / "big"
    uids = big_collection(root, size=130, images_from=annot_collection.root)
    d = browser
    server = Server(type(annot_collection)(root=root, clusters=root / "clusters.csv", uids=uids))
    try:
        d.get(server.url)
        _wait_cluster(d, 0)
        assert len(d.find_elements(By.CSS_SELECTOR, ".card")) == 60
        assert _text(d, "#page-info").startswith("page 1 of 3")
        _key(d, "1")
        _key(d, Keys.ARROW_RIGHT)
        _wait(d, lambda d: _text(d, "#page-info").startswith("page 2 of 3"), "page 2 shown")
        assert d.find_elements(By.CSS_SELECTOR, ".card")[0].get_attribute("id") == "card-61"
        _key(d, "1")  # the first member of the visible page: #61
        assert "ticked" in d.find_element(By.ID, "card-61").get_attribute("class")
        assert _text(d, "#tick-count") == "2 of 130 ticked"
        _key(d, Keys.ARROW_RIGHT)
        _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 10, "last page: 10 members")
        d.find_element(By.ID, "prev-page").click()
        d.find_element(By.ID, "prev-page").click()
        _wait(d, lambda d: _text(d, "#page-info").startswith("page 1 of 3"), "back on page 1")
        assert "ticked" in d.find_element(By.ID, "card-1").get_attribute("class")  # ticks survive paging
        d.find_element(By.ID, "select-all").click()
        assert _text(d, "#tick-count") == "130 of 130 ticked"
        _key(d, "2")
        assert _text(d, "#tick-count") == "129 of 130 ticked"
        _key(d, "c")
        _wait_cluster(d, 1)
        rec = _records(type(annot_collection)(root=root, clusters=None, uids=uids))[-1]
        assert rec["decision"] == "confirm" and rec["cluster"] == 0
        assert rec["ticked"] == [u for u in uids[:130] if u != uids[1]]

        # the map's lasso: the page asks, then queues the selection as a proposal and opens it
        chosen = [uids[130], uids[7], uids[133]]
        d.get(server.url + "#propose=" + quote(json.dumps(chosen)))
        WebDriverWait(d, 10).until(ec.alert_is_present()).accept()
        _wait(d, lambda d: _text(d, "#cluster-head h2") == "Proposal 1", "the proposal shown")
        assert d.current_url.endswith("#cluster=-2")
        assert len(d.find_elements(By.CSS_SELECTOR, ".card")) == 3
        props = [json.loads(x) for x in (root / "proposals.jsonl").read_text().splitlines()]
        assert [(p["cluster"], sorted(p["uids"])) for p in props] == [(-2, sorted(chosen))]
        _key(d, "w")
        _wait(d, lambda d: _records(type(annot_collection)(root=root, clusters=None, uids=uids))[-1]["cluster"] == -2,
              "the proposal judged")
    finally:
        server.stop()
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


@pytest.mark.slow
def test_split_by_keyboard_cursor_and_the_disagreements_panel(browser, annot_collection):
    """j / k move a focus cursor, space ticks, g makes the ticked a sub-group, p splits; then another annotator's
    other verdict on that cluster shows in the disagreements panel."""
    d = browser
    server = Server(annot_collection, independent=True)
    try:
        d.get(server.url)
        cid = EXPECTED_QUEUE[0]
        _wait_cluster(d, cid)
        for key in ("j", " ", "j", " ", "g"):  # cursor on #1, tick, #2, tick, group 1
            _key(d, key)
        assert "cursor" in d.find_element(By.ID, "card-2").get_attribute("class")
        for key in (Keys.ARROW_DOWN, " ", "k", "j", "j", " ", "g"):  # #3 ticked, up to #2, down to #4, ticked
            _key(d, key)  # group 2: #3 and #4
        chips = {c.find_element(By.XPATH, "..").get_attribute("id"): c.text
                 for c in d.find_elements(By.CSS_SELECTOR, ".card .group-chip")}
        assert chips == {"card-1": "group 1", "card-2": "group 1", "card-3": "group 2", "card-4": "group 2"}
        assert _text(d, "#group-count") == "4 in 2 sub-groups" and _text(d, "#tick-count") == "0 of 6 ticked"
        groups = [[_uid_of(d, 1), _uid_of(d, 2)], [_uid_of(d, 3), _uid_of(d, 4)]]
        _key(d, "p")
        _wait_cluster(d, EXPECTED_QUEUE[1])
        rec = _records(annot_collection)[-1]
        assert rec["decision"] == "split" and rec["annotator"] == "ada"
        assert sorted(map(sorted, rec["groups"])) == sorted(map(sorted, groups))
        assert "Saved" in _text(d, "#message")
    finally:
        server.stop()
    # bob, judging independently, calls the same cluster wrong: the panel lists the disagreement
    bob = create_app(annot_collection.root, annot_collection.clusters, "bob", independent=True).test_client()
    assert bob.post("/api/decision", json={"cluster": cid, "decision": "wrong", "ticked": []}).status_code == 200
    server = Server(annot_collection, independent=True)
    try:
        d.get(server.url + f"#cluster={cid}")
        _wait_cluster(d, cid)
        assert "bob: Wrong cluster" in _text(d, "#cluster-head")
        d.find_element(By.ID, "show-disagreements").click()
        _wait(d, lambda d: d.find_element(By.ID, "disagreements").is_displayed(), "disagreements panel shown")
        item = d.find_element(By.CSS_SELECTOR, f"#disagreements li[data-cluster='{cid}']")
        assert "ada: Split into sub-groups (2 groups)" in item.text and "bob: Wrong cluster" in item.text
        assert "decisions differ" in item.text
    finally:
        server.stop()
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
