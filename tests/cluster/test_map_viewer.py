"""The map viewer in a real headless Chromium (WebGL in software), opened from its folder with no server:
hover, click, zoom, pan, images when zoomed in, search, filters, lasso, the proposal link, no errors,
nothing loaded from outside the disk."""

import json
import time
from urllib.parse import unquote

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from cluster.mapping import MapConfig, make_map
from tests.cluster.map_browser import chromium, severe, wait_for
from tests.cluster.test_mapping import make_tiny

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("map-browser")]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp, root, uids = make_tiny(tmp_path_factory.mktemp("viewer"))
    make_map(tmp / "sig.npz", root, tmp / "map", clusters_path=tmp / "clusters.csv",
             cfg=MapConfig(n_neighbors=5, workers=1, progress=False))  # fmt: skip
    with chromium() as driver:
        driver.get((tmp / "map" / "map.html").resolve().as_uri())
        wait_for(driver, "window.MAP && MAP.drawn")
        wait_for(driver, "!document.getElementById('status').textContent.includes('loading')")
        yield driver, uids


def _at(driver, i):
    """Offset of point i from the canvas centre (Selenium 4 offsets), and the canvas."""
    canvas = driver.find_element(By.ID, "cv")
    x, y = driver.execute_script(f"return MAP.sp.getScreenPosition({i});")
    return canvas, int(round(x - canvas.size["width"] / 2)), int(round(y - canvas.size["height"] / 2))


def _reset(driver):
    time.sleep(0.6)  # a zoom transition of the test before (0.5 s) would move the view after the reset
    driver.execute_script("MAP.sp.deselect(); document.getElementById('f-clear').click(); MAP.sp.zoomToOrigin();")


def test_hover_shows_the_image_and_its_metadata(page):
    driver, uids = page
    _reset(driver)
    canvas, dx, dy = _at(driver, 3)
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).perform()
    tip = driver.find_element(By.ID, "tip")
    wait_for(driver, "document.getElementById('tip').style.display === 'block'", 10)
    assert "Title, 3" in tip.text and "Painter 3" in tip.text and "c. 1503" in tip.text and "uid u03" in tip.text
    loaded = wait_for(driver, "(i => i && i.complete && i.naturalWidth)(document.querySelector('#tip img'))", 10)
    assert loaded > 0  # the thumbnail was found in the collection's cache and decoded
    canvas, dx, dy = _at(driver, 7)
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).perform()
    wait_for(driver, "document.getElementById('tip').textContent.includes('u07')", 10)
    assert "image unreadable" in tip.text and not driver.find_elements(By.CSS_SELECTOR, "#tip img")
    driver.execute_script("MAP.sp.zoomToLocation([0.3, 0.3], 0.5)")  # the view moves under a still mouse
    wait_for(driver, "document.getElementById('tip').style.display === 'none'", 10)  # no stale tooltip
    assert not severe(driver)


def test_a_map_moved_away_from_its_collection_says_so_on_hover(page):
    driver, uids = page
    _reset(driver)
    base = driver.execute_script("const t = MAPDATA.points_.thumbs, b = t.base; t.base = 'nowhere/'; return b;")
    try:
        canvas, dx, dy = _at(driver, 4)
        ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).perform()
        wait_for(driver, "document.getElementById('tip').textContent.includes('image not found')", 10)
        assert "Title, 4" in driver.find_element(By.ID, "tip").text
    finally:
        driver.execute_script(f"MAPDATA.points_.thumbs.base = {base!r};")
    driver.get_log("browser")  # the failed load of nowhere/u04.jpg is the point of this test


def test_click_opens_the_cluster_page_by_page(page):
    driver, uids = page
    _reset(driver)
    canvas, dx, dy = _at(driver, 3)
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
    side = driver.find_element(By.ID, "sel")
    wait_for(driver, "document.getElementById('sel').textContent.includes('Cluster 0')", 10)
    assert "Cluster 0 (10 images)" in side.text  # labels i % 3 for i < 30: cluster 0 = u00, u03, ..., u27
    assert len(side.find_elements(By.CSS_SELECTOR, ".m")) == 10
    side.find_element(By.XPATH, ".//button[text()='select this cluster']").click()
    assert sorted(wait_for(driver, "MAP.selected.length === 10 && MAP.selected", 10)) == list(range(0, 30, 3))
    assert not severe(driver)


def test_wheel_zooms_drag_pans_and_images_appear_when_zoomed_in(page):
    driver, uids = page
    _reset(driver)
    canvas = driver.find_element(By.ID, "cv")
    assert driver.execute_script("return document.querySelectorAll('#thumbs img').length") == 0
    for _ in range(6):
        driver.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -400, clientX: r.left + r.width / 2,"
            " clientY: r.top + r.height / 2, bubbles: true, cancelable: true}));", canvas)  # fmt: skip
        driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));")
    assert driver.execute_script("return MAP.sp.get('cameraDistance')") < 0.5
    target = driver.execute_script("return MAP.sp.get('cameraTarget')")
    ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(120, 0).release().perform()
    moved = driver.execute_script("return MAP.sp.get('cameraTarget')")
    assert moved[0] < target[0] - 1e-3  # dragging right moves the view's centre left
    driver.execute_script("MAP.sp.zoomToPoints([0, 3, 6], {padding: 0.3})")
    n = wait_for(driver, "document.querySelectorAll('#thumbs img').length", 10)
    assert 0 < n <= 35 and driver.execute_script(
        "return [...document.querySelectorAll('#thumbs img')].every(i => i.src.startsWith('file:'))")
    assert not severe(driver)


def test_search_and_filters(page):
    driver, uids = page
    _reset(driver)
    box = driver.find_element(By.ID, "search")
    box.clear()
    box.send_keys("painter 3")  # author, case-insensitive: u03, u08, ..., u33
    wait_for(driver, "MAP.lastSearch && MAP.lastSearch.length === 7", 10)
    assert "7 found" in driver.find_element(By.ID, "results").text
    box.clear()
    box.send_keys("u1")  # uids u10..u19
    wait_for(driver, "MAP.lastSearch.length === 10", 10)
    box.clear()
    box.send_keys("TÍTLE,   3")  # accents, case and runs of spaces do not matter: "Title, 3", "Title, 30".."35"
    wait_for(driver, "MAP.lastSearch.length === 7", 10)
    driver.find_element(By.CSS_SELECTOR, "#filters summary").click()
    driver.find_element(By.ID, "f-cluster").send_keys("noise")
    driver.find_element(By.ID, "f-apply").click()
    assert "6 of 36" in driver.find_element(By.ID, "status").text
    driver.find_element(By.ID, "f-clear").click()
    driver.find_element(By.ID, "f-from").send_keys("1500")
    driver.find_element(By.ID, "f-to").send_keys("1504")
    driver.find_element(By.ID, "f-to").send_keys(Keys.ENTER)
    assert "5 of 36" in driver.find_element(By.ID, "status").text
    assert wait_for(driver, "MAP.sp.get('cameraDistance') < 0.9", 10)  # the view goes to what is left
    driver.find_element(By.ID, "f-clear").click()
    driver.execute_script("document.getElementById('f-col').value = '2'")  # author
    driver.find_element(By.ID, "f-text").send_keys("Painter 4")
    driver.find_element(By.ID, "f-apply").click()
    assert "7 of 36" in driver.find_element(By.ID, "status").text
    driver.find_element(By.ID, "f-group").send_keys("any")
    driver.find_element(By.ID, "f-apply").click()
    assert "0 of 36" in driver.find_element(By.ID, "status").text  # u00, u03, u06 are by painters 0, 3, 1
    driver.find_element(By.ID, "f-clear").click()
    assert "36 of 36" in driver.find_element(By.ID, "status").text
    assert not severe(driver)


def test_lasso_selects_and_opens_a_proposal_in_the_annotation_app(page):
    driver, uids = page
    _reset(driver)
    pts = driver.execute_script("return [0, 3, 6, 9].map(i => MAP.sp.getScreenPosition(i))")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    canvas = driver.find_element(By.ID, "cv")
    cx, cy = canvas.size["width"] / 2, canvas.size["height"] / 2
    # a generous box around the cluster of u00 (cluster 0 and its noise neighbours), drawn with shift held
    x0, x1, y0, y1 = min(xs) - 40, max(xs) + 40, min(ys) - 40, max(ys) + 40
    chain = ActionChains(driver).key_down(Keys.SHIFT).move_to_element_with_offset(canvas, int(x0 - cx), int(y0 - cy))
    chain.click_and_hold()
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0 + 5)]
    for (ax, ay), (bx, by) in zip(corners, corners[1:], strict=False):  # each side in small steps, as a hand draws it
        for t in (0.25, 0.5, 0.75, 1.0):
            chain.move_to_element_with_offset(canvas, int(ax + (bx - ax) * t - cx), int(ay + (by - ay) * t - cy))
            chain.pause(0.02)
    chain.release().key_up(Keys.SHIFT).perform()
    chosen = wait_for(driver, "MAP.selected.length > 1 && MAP.selected", 10)
    assert {0, 3, 6, 9} <= set(chosen)
    assert f"Selection ({len(chosen)} images)" in driver.find_element(By.ID, "sel").text
    # opened from a folder: the app's address with the selection in the fragment, in a new tab
    before = set(driver.window_handles)
    driver.find_element(By.XPATH, "//button[text()='judge in the annotation app']").click()
    wait_for(driver, f"true && {len(before)}", 1)
    handles = [h for h in driver.window_handles if h not in before]
    assert len(handles) == 1
    main = driver.current_window_handle
    driver.switch_to.window(handles[0])
    url = driver.current_url
    driver.close()
    driver.switch_to.window(main)
    assert url.startswith("http://127.0.0.1:8765/#propose=")
    assert sorted(json.loads(unquote(url.split("#propose=", 1)[1]))) == sorted(uids[i] for i in chosen)
    assert not severe(driver)


def test_everything_the_page_loaded_came_from_the_disk(page):
    """The browser resolves no host name (map_browser.FLAGS), so a remote resource would fail with a console
    error; none did, and every image and script of the page is a file of the map or the collection's cache."""
    driver, uids = page
    urls = driver.execute_script(
        "return [...document.querySelectorAll('script[src], img[src], link[href]')].map(e => e.src || e.href)")
    assert len(urls) >= 4 + 3 and all(u.startswith(("file:", "data:")) for u in urls), urls  # scripts, columns, css
    assert not severe(driver)
