"""What a new user met on the annotation page (issue 16's trial), in a real headless Chromium: a cluster opened
at one of its images (from the map, from the "missed" panel) keeps its heading in view, decisions are named as the
buttons name them (never `confirm_reject`), a decided cluster shows what its decision ticked and grouped, messages
name a proposal as the page does ("proposal 1", not its id -2), undo says which cluster came back, the enlarged
picture's caption lists no empty fields, and at 900 px the bar of buttons leaves room for the cards."""

from __future__ import annotations

import csv
import json
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.cluster.conftest import EXPECTED_QUEUE
from tests.cluster.map_browser import chromium
from tests.cluster.test_annotate_browser import FLAGS, _key, _text, _wait, _wait_cluster, opened

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    with chromium(1400, 1000, flags=FLAGS, page_load_timeout=30) as driver:
        yield driver


def _rect(d, css):
    return d.execute_script("const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                            "return {top: r.top, bottom: r.bottom, height: r.height};", css)


def test_a_cluster_opened_at_an_image_keeps_its_heading_in_view(browser, annot_collection):
    d = browser
    first = EXPECTED_QUEUE[0]
    with opened(d, annot_collection) as server:
        uid = d.find_element(By.ID, "card-1").get_attribute("data-uid")  # on the first row: in view as it is
        d.set_window_size(1400, 700)  # a laptop: the page scrolls
        try:
            d.get(server.url + f"#cluster={first}&uid={uid}")
            d.refresh()
            _wait_cluster(d, first)
            _wait(d, lambda d: "focus" in d.find_element(By.ID, "card-1").get_attribute("class"), "card marked")
            assert d.execute_script("return document.documentElement.scrollHeight > window.innerHeight + 200")
            top_bar = _rect(d, "header.top")
            head = _rect(d, "#cluster-head h2")
            assert head["top"] >= top_bar["bottom"] - 1, (head, top_bar)  # not scrolled under the sticky top bar
        finally:
            d.set_window_size(1400, 1000)


def test_decisions_are_named_as_the_buttons_name_them(browser, annot_collection):
    d = browser
    first = EXPECTED_QUEUE[0]
    with opened(d, annot_collection) as server:
        _key(d, "1")
        _key(d, "2")
        _key(d, "r")
        _wait_cluster(d, EXPECTED_QUEUE[1])
        d.get(server.url + f"#cluster={first}")
        d.refresh()
        _wait_cluster(d, first)
        head = _text(d, "#cluster-head")
        assert "already decided: Confirm, reject the rest" in head, head
        assert "ada: Confirm, reject the rest" in head, head
        assert "confirm_reject" not in head


def test_undo_names_the_cluster_that_came_back(browser, annot_collection):
    d = browser
    with opened(d, annot_collection):
        _key(d, "n")  # skip the first
        _wait_cluster(d, EXPECTED_QUEUE[1])
        _key(d, "n")
        _wait_cluster(d, EXPECTED_QUEUE[2])
        _key(d, "u")
        _wait(d, lambda d: "Undone" in _text(d, "#message"), "undone")
        assert f"Cluster {EXPECTED_QUEUE[1]} is back" in _text(d, "#message")


def test_the_enlarged_picture_lists_no_empty_field(browser, annot_collection):
    path = annot_collection.root / "images.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    for r in rows[1:]:
        r[5] = ""  # no place
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    d = browser
    with opened(d, annot_collection):
        d.execute_script("document.querySelector('#card-1 img').click()")
        _wait(d, lambda d: d.find_element(By.ID, "zoom").is_displayed(), "the picture is enlarged")
        text = _text(d, "#zoom p")
        assert "title: " in text and "place" not in text, text
        _key(d, "\ue00c")  # Escape


def test_at_900_px_the_bar_of_buttons_leaves_room_for_the_cards(annot_collection):
    with chromium(900, 900, flags=FLAGS, page_load_timeout=30) as d, opened(d, annot_collection) as server:
        view = d.execute_script("return window.innerHeight")
        bar = _rect(d, "footer.actions")
        assert bar["height"] <= 0.2 * view, (bar, view)
        assert d.execute_script("return document.documentElement.scrollWidth") <= 900
        # a decided cluster's head (decision, verdicts, the way back) wraps; its title stays on one line
        for key in ("1", "2", "r"):
            _key(d, key)
        _wait_cluster(d, EXPECTED_QUEUE[1])
        d.get(server.url + f"#cluster={EXPECTED_QUEUE[0]}")
        d.refresh()
        _wait_cluster(d, EXPECTED_QUEUE[0])
        assert _rect(d, "#cluster-head h2")["height"] < 40


def test_a_decided_cluster_shows_what_its_decision_ticked_and_grouped(browser, annot_collection):
    """The disagreements panel says "ticked only by bob: #2"; the decided cluster must show those ticks to be judged."""
    d = browser
    first = EXPECTED_QUEUE[0]
    with opened(d, annot_collection) as server:
        for key in ("1", "3", "c"):
            _key(d, key)
        _wait_cluster(d, EXPECTED_QUEUE[1])
        for key in ("1", "g", "2", "3", "g", "p"):  # a split: #1 | #2, #3
            _key(d, key)
        _wait_cluster(d, EXPECTED_QUEUE[2])
        d.get(server.url + f"#cluster={first}")
        d.refresh()
        _wait_cluster(d, first)
        boxes = {n: d.find_element(By.ID, f"tick-{n}") for n in range(1, 7)}
        assert [n for n, b in boxes.items() if b.is_selected()] == [1, 3]
        assert not any(b.is_enabled() for b in boxes.values())  # read-only
        assert not d.find_element(By.ID, "rest-group").is_enabled()
        assert _text(d, "#tick-count").startswith("2 of 6 ticked")
        d.get(server.url + f"#cluster={EXPECTED_QUEUE[1]}")
        _wait_cluster(d, EXPECTED_QUEUE[1])
        chips = {c.find_element(By.XPATH, "..").get_attribute("id"): c.text
                 for c in d.find_elements(By.CSS_SELECTOR, ".card .group-chip")}
        assert chips == {"card-1": "group 1", "card-2": "group 2", "card-3": "group 2"}


def test_a_decision_on_a_proposal_names_the_proposal_not_its_id(browser, annot_collection):
    d = browser
    chosen = annot_collection.uids[14:16]  # the noise pair, selected on the map
    with opened(d, annot_collection) as server:
        d.get(server.url + "#propose=" + quote(json.dumps(chosen)))
        WebDriverWait(d, 10).until(ec.alert_is_present()).accept()
        _wait(d, lambda d: _text(d, "#cluster-head h2") == "Proposal 1", "the proposal shown")
        _key(d, "w")
        _wait(d, lambda d: "Saved" in _text(d, "#message"), "saved")
        message = _text(d, "#message")
        assert "for proposal 1:" in message and "-2" not in message, message
        _key(d, "u")
        _wait(d, lambda d: "Undone" in _text(d, "#message"), "undone")
        assert "Proposal 1 is back" in _text(d, "#message")


def test_space_or_enter_after_a_clicked_decision_does_not_decide_the_next_cluster(browser, annot_collection):
    """A decision button clicked with the mouse kept the focus: the next space (the key that ticks the card under the
    cursor) or Enter pressed it again, deciding the next cluster unseen. Undo likewise."""
    d = browser
    with opened(d, annot_collection):
        d.find_element(By.CSS_SELECTOR, "button[data-decision='skip']").click()
        _wait_cluster(d, EXPECTED_QUEUE[1])
        for key in (" ", "\ue007"):  # space, Enter
            d.switch_to.active_element.send_keys(key)
        d.find_element(By.ID, "undo").click()
        _wait_cluster(d, EXPECTED_QUEUE[0])
        d.switch_to.active_element.send_keys("\ue007")
        _wait(d, lambda d: "Undone" in _text(d, "#message"), "undone")
    records = (annot_collection.root / "annotations.jsonl").read_text().splitlines()
    assert [json.loads(r)["kind"] for r in records] == ["decision", "undo"], records


def test_the_rest_is_a_group_is_unticked_for_the_next_cluster(browser, annot_collection):
    """Like the sub-groups, "the rest is a group" belongs to the cluster it was ticked on: left ticked, the next
    split would make its rest a group unasked."""
    d = browser
    with opened(d, annot_collection):
        for key in ("1", "2", "g"):
            _key(d, key)
        d.find_element(By.ID, "rest-group").click()
        _key(d, "p")
        _wait_cluster(d, EXPECTED_QUEUE[1])
        assert json.loads((annot_collection.root / "annotations.jsonl").read_text())["decision"] == "split"
        assert not d.find_element(By.ID, "rest-group").is_selected()
