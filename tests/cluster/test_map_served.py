"""The map served by the annotation app (`cluster annotate --map`): its files, the thumbnails by name, the
app's own app.js, no path from a request, and a lasso's selection queued as a proposal in a real browser."""

import json
import threading

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from cluster.annotate.app import create_app
from cluster.annotate.map_routes import APP_JS
from cluster.mapping import MapConfig, make_map
from tests.cluster.map_browser import chromium, severe, wait_for
from tests.cluster.test_mapping import make_tiny

pytestmark = pytest.mark.slow  # UMAP, then a browser


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp, root, uids = make_tiny(tmp_path_factory.mktemp("served"))
    make_map(tmp / "sig.npz", root, tmp / "map", clusters_path=tmp / "clusters.csv",
             cfg=MapConfig(n_neighbors=5, workers=1, progress=False, app_address=BUILT_FOR))  # fmt: skip
    app = create_app(root, tmp / "clusters.csv", "ada", map_dir=tmp / "map")
    return tmp, root, uids, app


BUILT_FOR = "http://127.0.0.1:9/annotate/"  # the app's address given when the map was made (`--app-address`)


class _Served:
    """`app` on a free loopback port, in a thread (a context manager)."""

    def __init__(self, app):
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _click_point(driver, i):
    """What a click on point i does (regl-scatterplot selects it; the side panel shows its cluster)."""
    driver.execute_script(f"MAP.sp.select([{i}])")
    wait_for(driver, "document.querySelector('#sel a.judge')", 10)
    return driver.execute_script("const a = document.querySelector('#sel a.judge'); return [a.getAttribute('href'), "
                                 "a.target, document.getElementById('sel').textContent];")


def test_a_click_on_the_served_map_opens_the_annotation_page_at_that_cluster_and_image(served):
    tmp, root, uids, app = served
    with _Served(app) as srv, chromium() as driver:
        driver.get(srv.url + "map/")
        wait_for(driver, "window.MAP && MAP.drawn")
        wait_for(driver, "!document.getElementById('status').textContent.includes('loading')")
        href, target, text = _click_point(driver, 4)  # u04: cluster 1
        assert href == "/#cluster=1&uid=u04" and target == "" and "judge cluster 1" in text
        driver.find_element("css selector", "#sel a.judge").click()
        wait_for(driver, "document.querySelector('#cluster-head h2') && "
                         "document.querySelector('#cluster-head h2').textContent === 'Cluster 1'", 20)
        assert wait_for(driver, "document.querySelector('.card.focus') && document.querySelector('.card.focus').dataset.uid", 10) == "u04"
        errors = [e for e in severe(driver) if "/image/u07" not in e["message"]]
        assert not errors, errors
        driver.get(srv.url + "map/")
        wait_for(driver, "window.MAP && MAP.drawn")
        wait_for(driver, "!document.getElementById('status').textContent.includes('loading')")
        driver.execute_script("MAP.sp.select([33])")  # u33: noise, no cluster to judge
        wait_for(driver, "document.getElementById('sel').textContent.includes('noise: in no cluster')", 10)
        assert not driver.find_elements("css selector", "#sel a.judge")


def test_a_click_on_the_map_opened_from_its_folder_links_to_the_address_given_when_it_was_made(served):
    tmp, root, uids, app = served
    plain = create_app(root, tmp / "clusters.csv", "ada")  # the app started on its own, no --map
    with _Served(plain) as srv, chromium() as driver:
        driver.get((tmp / "map" / "map.html").resolve().as_uri())
        wait_for(driver, "window.MAP && MAP.drawn")
        wait_for(driver, "!document.getElementById('status').textContent.includes('loading')")
        href, target, text = _click_point(driver, 3)  # u03: cluster 0
        assert href == BUILT_FOR + "#cluster=0&uid=u03" and target == "_blank"
        assert "start the annotation app there first" in text and BUILT_FOR in text
        # the app runs elsewhere: the address typed in the map's "app at" box is used from then on
        driver.execute_script(f"localStorage.setItem('map-app-address', {srv.url!r})")
        href, _, _ = _click_point(driver, 6)
        assert href == srv.url + "#cluster=0&uid=u06"
        driver.get(href)
        wait_for(driver, "document.querySelector('#cluster-head h2') && "
                         "document.querySelector('#cluster-head h2').textContent === 'Cluster 0'", 20)
        assert wait_for(driver, "document.querySelector('.card.focus') && document.querySelector('.card.focus').dataset.uid", 10) == "u06"


def test_the_map_command_checks_the_app_address(served, tmp_path):
    from cluster.__main__ import cli

    tmp, root, uids, app = served
    assert f'"app_address":"{BUILT_FOR}"' in (tmp / "map" / "data" / "points.js").read_text()
    r = CliRunner().invoke(cli, ["map", str(tmp / "sig.npz"), "--collection", str(root), "--out", str(tmp_path / "m"),
                                 "--app-address", "127.0.0.1:8765"])  # fmt: skip
    assert r.exit_code == 2 and "--app-address" in r.output and "not an http address" in r.output
    assert not (tmp_path / "m").exists()


def test_the_map_files_and_thumbnails_are_served_and_nothing_else(served):
    tmp, root, uids, app = served
    c = app.test_client()
    page = c.get("/map/")
    assert page.status_code == 200 and b'id="cv"' in page.data
    assert "'unsafe-eval'" in page.headers["Content-Security-Policy"]  # regl compiles its draw calls
    assert "'unsafe-eval'" not in c.get("/").headers["Content-Security-Policy"]  # the annotation page: strict
    assert c.get("/map/lib/app.js").get_data(as_text=True) == APP_JS  # the app's routes, not the folder's
    assert (tmp / "map" / "lib" / "app.js").read_text().startswith("window.MAPAPP = null")
    assert c.get("/map/lib/regl-scatterplot.min.js").status_code == 200
    assert c.get("/map/data/points.js").data == (tmp / "map" / "data" / "points.js").read_bytes()
    assert c.get("/map/data/col-3.js").status_code == 200 and c.get("/map/data/col-4.js").status_code == 404
    thumb = c.get("/thumbs/u03.jpg")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg" and thumb.data[:2] == b"\xff\xd8"
    assert thumb.data == (root / ".cache" / "thumbs-256" / "u03.jpg").read_bytes()
    bad = c.get("/thumbs/u07.jpg")  # the corrupt image: a reason, no picture
    assert bad.status_code == 404 and "u07" in bad.get_json()["error"]
    for path in ("/thumbs/..%2Fimages.csv", "/map/lib/..%2F..%2Fimages.csv", "/map/data/..%2Fmap.png",
                 "/map/lib/coords.csv", "/map/data/col-1.json", "/thumbs/nobody.jpg"):  # fmt: skip
        assert c.get(path).status_code == 404, path


def test_annotate_refuses_a_folder_that_is_not_a_map(served, tmp_path):
    from cluster.__main__ import cli

    tmp, root, uids, app = served
    (tmp_path / "notmap").mkdir()
    r = CliRunner().invoke(cli, ["annotate", "--collection", str(root), "--clusters", str(tmp / "clusters.csv"),
                                 "--map", str(tmp_path / "notmap"), "--port", "0"])  # fmt: skip
    assert r.exit_code == 1 and "not a map folder" in r.output and "Traceback" not in r.output


def test_a_lasso_on_the_served_map_becomes_a_proposal_to_judge(served):
    tmp, root, uids, app = served
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{httpd.server_port}/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with chromium() as driver:
            driver.get(url + "map/")
            wait_for(driver, "window.MAP && MAP.drawn")
            wait_for(driver, "!document.getElementById('status').textContent.includes('loading')")
            assert driver.execute_script("return MAP.thumbURL(3)") == "/thumbs/u03.jpg"
            driver.execute_script("MAP.sp.select([1, 4, 7, 10])")  # what a lasso around them selects
            wait_for(driver, "document.getElementById('sel').textContent.includes('Selection (4 images)')", 10)
            button = driver.find_element("xpath", "//button[text()='judge in the annotation app']")
            button.click()
            wait_for(driver, "location.hash.startsWith('#cluster=-')", 20)
            wait_for(driver, "document.body.textContent.includes('Title, 4') && document.body.textContent.includes('4 images')", 20)
            errors = [e for e in severe(driver) if "/image/u07" not in e["message"]]  # shown as unreadable
            assert not errors, errors
    finally:
        httpd.shutdown()
        httpd.server_close()
    records = [json.loads(x) for x in (root / "proposals.jsonl").read_text().splitlines()]
    assert len(records) == 1 and sorted(records[0]["uids"]) == ["u01", "u04", "u07", "u10"]


def test_the_judge_link_is_set_apart_from_the_select_button(served):
    """The trial saw "select this clusterjudge cluster 21 in the annotation page": the button and the link glued."""
    tmp, root, uids, app = served
    with _Served(app) as srv, chromium() as driver:
        driver.get(srv.url + "map/")
        wait_for(driver, "window.MAP && MAP.drawn")
        _click_point(driver, 4)
        button, link = driver.execute_script(
            "const b = [...document.querySelectorAll('#sel button')].find(x => x.textContent === 'select this cluster');"
            "const a = document.querySelector('#sel a.judge');"
            "return [b.getBoundingClientRect().toJSON(), a.getBoundingClientRect().toJSON()];")
        assert link["top"] >= button["bottom"] or link["left"] >= button["right"] + 6, (button, link)
