"""Search in the annotation page, in a real headless Chromium: "more like this" on a card shows ranked results
with thumbnails and boxes; a box dragged on the enlarged picture searches that detail in the image's own pixels;
"add to this cluster" journals the addition and shows it under the cluster."""

from __future__ import annotations

import json

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from tests.cluster.map_browser import chromium
from tests.cluster.test_annotate_browser import FLAGS, _wait, opened
from tests.cluster.test_annotate_search import search_index  # noqa: F401  (the session's index fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    with chromium(1400, 1000, flags=FLAGS, page_load_timeout=30) as driver:
        yield driver


@pytest.fixture
def page(browser, annot_collection, search_index):  # noqa: F811
    with opened(browser, annot_collection, index_dir=search_index):
        yield browser


def _results(d):
    return d.find_elements(By.CSS_SELECTOR, "#search-results .hit")


def _loaded(d, css):
    return d.execute_script(
        f"return [...document.querySelectorAll({css!r})].every(i => i.complete && i.naturalWidth > 0)")


def test_more_like_this_shows_ranked_results_with_thumbnails_and_boxes(page):
    d = page
    first = d.find_element(By.ID, "card-1")
    first.find_element(By.CSS_SELECTOR, "button.like").click()
    _wait(d, lambda d: len(_results(d)) == 15, "results shown")  # 16 images, the query left out
    assert d.find_element(By.ID, "search-title").text == "More like this"
    uid = first.get_attribute("data-uid")
    assert uid in d.find_element(By.ID, "search-query").text
    assert uid not in [h.get_attribute("data-uid") for h in _results(d)]
    _wait(d, lambda d: _loaded(d, "#search-results img"), "thumbnails loaded")
    scores = [float(h.find_element(By.CSS_SELECTOR, ".f-score").text.split("score ")[1].split(" ")[0])
              for h in _results(d)]
    assert scores == sorted(scores, reverse=True)
    # members of the open cluster cannot be added; the others can
    members = {c.get_attribute("data-uid") for c in d.find_elements(By.CSS_SELECTOR, ".card")}
    for h in _results(d):
        add = h.find_element(By.CSS_SELECTOR, "button.add")
        assert add.is_enabled() == (h.get_attribute("data-uid") not in members)
    # a hit whose best match is a region has that region drawn over its thumbnail, in percent
    boxes = d.find_elements(By.CSS_SELECTOR, "#search-results .hitbox")
    for b in boxes:
        assert b.get_attribute("style").count("%") == 4


def test_a_box_dragged_on_the_enlarged_picture_searches_that_detail(page):
    d = page
    uid = d.find_element(By.ID, "card-2").get_attribute("data-uid")
    d.find_element(By.CSS_SELECTOR, "#card-2 .thumb img").click()
    _wait(d, lambda d: d.execute_script("return !!(state.zoomed && state.zoomed.size)"), "size known")
    img = d.find_element(By.CSS_SELECTOR, "#zoom img")
    _wait(d, lambda d: _loaded(d, "#zoom img"), "enlarged picture loaded")
    w, h = d.execute_script("return state.zoomed.size")
    rect = img.rect
    # from the picture's centre to past its bottom-right corner: the detail is its bottom-right quarter
    ActionChains(d).move_to_element(img).click_and_hold().move_by_offset(
        int(rect["width"] / 2) + 15, int(rect["height"] / 2) + 15).release().perform()
    _wait(d, lambda d: len(_results(d)) > 0, "detail results shown")
    assert d.find_element(By.ID, "search-title").text == "Where else does this detail appear?"
    box = d.execute_script("return state.query.box")
    assert abs(box[0] - w / 2) <= 3 and abs(box[1] - h / 2) <= 3
    assert abs(box[0] + box[2] - w) <= 1 and abs(box[1] + box[3] - h) <= 1
    assert f"of {uid}" in d.find_element(By.ID, "search-query").text
    assert d.find_elements(By.CSS_SELECTOR, "#search-query .hitbox")  # the detail drawn on the query


def test_add_to_this_cluster_journals_it_and_shows_it(page, annot_collection):
    d = page
    d.find_element(By.CSS_SELECTOR, "#card-1 button.like").click()
    _wait(d, lambda d: len(_results(d)) == 15, "results shown")
    hit = next(h for h in _results(d) if h.find_element(By.CSS_SELECTOR, "button.add").is_enabled())
    uid = hit.get_attribute("data-uid")
    hit.find_element(By.CSS_SELECTOR, "button.add").click()
    _wait(d, lambda d: f"Added {uid}" in d.find_element(By.ID, "message").text, "addition confirmed")
    assert not hit.find_element(By.CSS_SELECTOR, "button.add").is_enabled()
    assert [li.get_attribute("data-uid") for li in d.find_elements(By.CSS_SELECTOR, "#added li")] == [uid]
    (rec,) = [json.loads(x) for x in (annot_collection.root / "annotations.jsonl").read_text().splitlines()]
    assert rec["decision"] == "add" and rec["members"] == [uid] and rec["cluster"] == 2
    assert rec["query"]["uid"] == d.find_element(By.ID, "card-1").get_attribute("data-uid")
    # undone with the footer's undo, like any decision
    d.find_element(By.ID, "undo").click()
    _wait(d, lambda d: "taken out" in d.find_element(By.ID, "message").text, "undo confirmed")
    assert d.find_element(By.ID, "added").get_attribute("hidden") is not None


def test_moving_to_another_cluster_closes_the_results_so_nothing_is_added_to_the_wrong_one(page, annot_collection):
    d = page
    d.find_element(By.CSS_SELECTOR, "#card-1 button.like").click()
    _wait(d, lambda d: len(_results(d)) == 15, "results shown")
    d.find_element(By.TAG_NAME, "body").send_keys("n")  # skip: the next cluster opens
    _wait(d, lambda d: d.find_element(By.ID, "search").get_attribute("hidden") is not None, "results closed")
    assert not (annot_collection.root / "annotations.jsonl").exists() or \
        "add" not in (annot_collection.root / "annotations.jsonl").read_text()
    # a stale result's button cannot reach the new cluster either (the page's guard, driven directly)
    d.execute_script("state.searchCluster = -999;")
    msg = d.execute_script("""
        const h = {uid: 'x', score: 0.5}; const b = document.createElement('button');
        return addHit(h, {uid: 'q', box: null}, b).then(() => document.getElementById('message').textContent);""")
    assert "found for another cluster" in msg


def test_a_box_may_start_just_outside_the_picture_and_a_plain_click_there_still_closes_it(page):
    d = page
    d.find_element(By.CSS_SELECTOR, "#card-2 .thumb img").click()
    _wait(d, lambda d: d.execute_script("return !!(state.zoomed && state.zoomed.size)"), "size known")
    _wait(d, lambda d: _loaded(d, "#zoom img"), "enlarged picture loaded")
    w, h = d.execute_script("return state.zoomed.size")
    r = d.execute_script("const r = contentRect(document.querySelector('#zoom img'));"
                         "return [r.left, r.top, r.width, r.height];")
    # press 12 px above-left of the picture's corner, on the backdrop, release at its centre: the top-left quarter
    zoom = d.find_element(By.ID, "zoom")
    zr = zoom.rect
    ActionChains(d).move_to_element_with_offset(zoom, int(r[0] - 12 - zr["x"] - zr["width"] / 2),
                                               int(r[1] - 12 - zr["y"] - zr["height"] / 2)).click_and_hold() \
        .move_by_offset(int(r[2] / 2) + 12, int(r[3] / 2) + 12).release().perform()
    _wait(d, lambda d: len(_results(d)) > 0, "detail results shown")
    box = d.execute_script("return state.query.box")
    assert box[0] == 0 and box[1] == 0 and abs(box[2] - w / 2) <= 3 and abs(box[3] - h / 2) <= 3
    d.find_element(By.CSS_SELECTOR, "#card-2 .thumb img").click()
    _wait(d, lambda d: d.find_element(By.ID, "zoom").get_attribute("hidden") is None, "enlarged again")
    d.execute_script("document.getElementById('zoom').dispatchEvent(new MouseEvent('mousedown', {button: 0, bubbles: true}));"
                     "window.dispatchEvent(new MouseEvent('mouseup', {bubbles: true}));"
                     "document.getElementById('zoom').click();")
    _wait(d, lambda d: d.find_element(By.ID, "zoom").get_attribute("hidden") is not None, "closed by a plain click")


def test_a_hits_box_is_drawn_on_its_picture_whatever_its_shape(page):
    """The results grid stretched each picture's frame to its cell, so a box in percent of the frame hung below a
    wide picture and off the side of a tall one. A wide and a tall hit, each with its right half as the box."""
    d = page
    d.find_element(By.CSS_SELECTOR, "#card-1 button.like").click()
    _wait(d, lambda d: len(_results(d)) > 0, "results shown")
    uid = d.find_element(By.ID, "card-1").get_attribute("data-uid")
    rects = d.execute_script("""
        const thumb = `/image/${encodeURIComponent(arguments[0])}?size=256`;
        const hit = (w, h) => ({uid: arguments[0], score: 5, similarity: 0.5, box: [w / 2, 0, w / 2, h], size: [w, h],
                                thumb, title: 'a long title that wraps '.repeat(12), author: 'an author', date: '1600',
                                in_collection: true, in_cluster: false, added: false});
        showResults({query: {uid: arguments[0], box: null, size: [10, 10], notes: []}, results: [hit(400, 100), hit(100, 400)]});
        return new Promise((done) => setTimeout(() => done([...document.querySelectorAll('#search-results .hit')].map((el) => {
          const img = el.querySelector('.pic img').getBoundingClientRect(), box = el.querySelector('.hitbox').getBoundingClientRect();
          return [img.left, img.top, img.right, img.bottom, box.left, box.top, box.right, box.bottom]; })), 1500));""", uid)
    assert len(rects) == 2
    for il, it, ir, ib, bl, bt, br, bb in rects:
        assert ir - il > 10 and ib - it > 10
        assert abs(br - ir) <= 2 and abs(bb - ib) <= 2 and abs(bt - it) <= 2  # the box ends where the picture does
        assert abs(bl - (il + ir) / 2) <= 2  # and starts at its middle
