"""What the expert sees of an explained proposal, in a real headless Chromium: each card's distances, known
partners and group, its full title however long, the "missed" panel with a link to where a member ended up, and
(with a search index) the matching regions drawn on both pictures."""

from __future__ import annotations

import csv

import pytest
from selenium.webdriver.common.by import By

from data.collection import Connection, write_connections
from tests.cluster.conftest import KNOWN
from tests.cluster.map_browser import chromium
from tests.cluster.test_annotate_browser import FLAGS, Server, _wait, _wait_cluster, opened
from tests.cluster.test_annotate_explain import _name_signatures, _signatures
from tests.cluster.test_annotate_search import search_index  # noqa: F401  (the session's index fixture)

pytestmark = pytest.mark.slow

LONG = ("Madonna of the Pinks, copy after Raphael, the version once at Alnwick Castle, with a later landscape "
        "and the Child's left hand repainted")


@pytest.fixture(scope="module")
def browser():
    with chromium(1400, 1000, flags=FLAGS, page_load_timeout=30) as driver:
        yield driver


@pytest.fixture
def explained(annot_collection):
    """The cluster tests' collection with signatures named by clusters.json, a long title with commas on member 1
    of cluster 2, and a known group split over clusters 0 and 3 (u8, u10) besides the noise pair (u14, u15)."""
    coll = annot_collection
    path, _ = _signatures(coll)
    _name_signatures(coll, path)
    u = coll.uids
    write_connections(coll.root / "connections.csv",
                      [Connection(u[a], u[b], t) for a, b, t in KNOWN] + [Connection(u[8], u[10], "POSITIVE")])
    with open(coll.root / "images.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    next(r for r in rows if r[0] == u[0])[2] = LONG
    with open(coll.root / "images.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return coll


def _card(d, uid):
    return d.find_element(By.CSS_SELECTOR, f'.card[data-uid="{uid}"]')


def test_cards_explain_the_proposal_and_show_full_titles(browser, explained):
    u = explained.uids
    with opened(browser, explained):
        card = _card(browser, u[0])
        dist = card.find_element(By.CSS_SELECTOR, ".x-dist").text
        assert "nearest #" in dist and "reach 0." in dist and "core 0." in dist
        near = _card(browser, u[4]).find_element(By.CSS_SELECTOR, ".x-dist").text  # u5 is a near-copy of u4
        number_of_u5 = _card(browser, u[5]).find_element(By.CSS_SELECTOR, ".num").text
        assert near.startswith(f"nearest #{number_of_u5} at ") and "e-" in near.split(" · ")[0]
        partners = card.find_element(By.CSS_SELECTOR, "details.x-partners")
        assert partners.find_element(By.TAG_NAME, "summary").text == "1 known POSITIVE"
        assert u[1] in partners.get_attribute("title") or "#" in partners.get_attribute("title")  # on hover
        partners.find_element(By.TAG_NAME, "summary").click()
        item = partners.find_element(By.TAG_NAME, "li").text
        number_of_u1 = _card(browser, u[1]).find_element(By.CSS_SELECTOR, ".num").text
        assert item.startswith(f"#{number_of_u1} — ") and len(item) > 6
        group = card.find_element(By.CSS_SELECTOR, ".x-group").text
        assert group.startswith("known group “") and "2 of 2 here" in card.text  # read by a member's title
        title = card.find_element(By.CSS_SELECTOR, ".f-title")
        assert title.text.replace("\n", " ") == LONG  # all of it shown, wrapped, nothing cut at a comma
        assert browser.execute_script("const e = arguments[0]; return e.scrollHeight <= e.clientHeight + 1;", title)
        assert title.get_attribute("title") == "title: " + LONG


def test_the_missed_panel_lists_lost_groups_and_links_to_where_members_went(browser, explained):
    u = explained.uids
    with opened(browser, explained):
        _wait(browser, lambda d: d.find_element(By.ID, "missed").is_displayed(), "the missed panel shown")
        panel = browser.find_element(By.ID, "missed")
        assert "Known groups the clustering missed (2)" in panel.text
        assert "2 known pattern group(s) of 4 images" in panel.text
        where = {li.get_attribute("data-uid"): li.text.split("\n")[-1]
                 for li in panel.find_elements(By.CSS_SELECTOR, ".missed-group li")}
        assert where == {u[8]: "cluster 0", u[10]: "cluster 3", u[14]: "noise", u[15]: "noise"}
        assert browser.execute_script(
            "return [...document.querySelectorAll('#missed img')].every(i => i.complete && i.naturalWidth > 0)")
        link = panel.find_element(By.CSS_SELECTOR, f'li[data-uid="{u[10]}"] a')
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)  # above the fixed footer
        link.click()
        _wait_cluster(browser, 3)
        _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".card.focus").get_attribute("data-uid") == u[10],
              "the member's card marked")


def test_matching_regions_are_drawn_on_both_pictures(browser, explained, search_index):  # noqa: F811
    u = explained.uids
    server = Server(explained, index_dir=search_index)
    try:
        browser.get(server.url)
        _wait_cluster(browser, 2)
        button = _card(browser, u[0]).find_element(By.CSS_SELECTOR, "button.match")
        # scrolled as a person would: WebDriver's own scrolling stops with the button under the decision bar
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()
        _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-results .match-pair")) == 5,
              "a pair for each other member")
        assert "matches the others" in browser.find_element(By.ID, "search-title").text
        for pair in browser.find_elements(By.CSS_SELECTOR, "#search-results .match-pair"):
            assert len(pair.find_elements(By.CSS_SELECTOR, ".pic")) == 2
            boxes = pair.find_elements(By.CSS_SELECTOR, ".hitbox")
            assert len(boxes) == 2 and all(b.size["width"] > 2 and b.size["height"] > 2 for b in boxes)
            assert "regions cosine" in pair.text and "whole images" in pair.text
    finally:
        server.stop()


def test_without_an_index_no_card_offers_matching_regions(browser, explained):
    with opened(browser, explained):
        assert browser.find_elements(By.CSS_SELECTOR, ".card") and not browser.find_elements(By.CSS_SELECTOR, "button.match")
