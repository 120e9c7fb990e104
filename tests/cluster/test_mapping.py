"""The map on a tiny synthetic collection: coordinates for every uid, a decodable PNG, an offline page."""

import csv
import os
import re
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from cluster.__main__ import cli
from cluster.clusters_file import ClusterTable, write_clusters
from cluster.mapping import MapConfig, make_map, thumb_name
from data.collection import Connection, write_connections
from data.signatures import Signatures, save_signatures

N = 36


@pytest.fixture
def tiny(tmp_path):
    """36 small images in 3 colour families (one file corrupt), signatures in 3 groups, a clusters.csv."""
    root = tmp_path / "coll"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    uids = [f"u{i:02d}" for i in range(N)]
    lines = ["uid,path,title,author,date"]
    for i, u in enumerate(uids):
        colour = [(200, 40, 40), (40, 200, 40), (40, 40, 200)][i % 3]
        Image.new("RGB", (48, 40), colour).save(root / "img" / f"{u}.png")
        lines.append(f'{u},img/{u}.png,"Title, {i}",Painter {i % 5},{1500 + i}')
    (root / "img" / "u07.png").write_bytes(b"not an image at all")
    (root / "images.csv").write_text("\n".join(lines) + "\n")
    write_connections(
        root / "connections.csv",
        [
            Connection("u00", "u03", "POSITIVE"),
            Connection("u03", "u06", "POSITIVE"),
            Connection("u01", "u02", "NEGATIVE"),
        ],
    )
    centres = rng.normal(size=(3, 16))
    x = centres[np.arange(N) % 3] + 0.1 * rng.normal(size=(N, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    save_signatures(tmp_path / "sig.npz", Signatures(uids=uids, vectors=x))
    labels = np.where(np.arange(N) < 30, np.arange(N) % 3, -1)
    write_clusters(
        tmp_path / "clusters.csv",
        ClusterTable(
            uids=uids, labels=labels, order=np.arange(N), reachability=np.zeros(N), core_distance=np.zeros(N)
        ),
    )
    return tmp_path, root, uids


@pytest.mark.slow  # UMAP compiles its numba kernels on first use (~20 s of CPU); then a real browser
def test_map_outputs(tiny):
    tmp, root, uids = tiny
    out = tmp / "map"
    res = make_map(
        tmp / "sig.npz",
        root,
        out,
        clusters_path=tmp / "clusters.csv",
        cfg=MapConfig(n_neighbors=5, thumb_size=32),
    )
    # coordinates for every uid, finite
    with open(out / "coords.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["uid"] for r in rows] == uids
    assert all(np.isfinite(float(r["x"])) and np.isfinite(float(r["y"])) for r in rows)
    assert rows[0]["group"] == "u00" and rows[1]["group"] == ""
    # the three synthetic groups come out separated: each point's nearest map neighbour is in its group
    xy = res.coords
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(N) * 1e9
    assert np.mean(np.argmin(d, axis=1) % 3 == np.arange(N) % 3) > 0.9
    # the PNG decodes
    with Image.open(out / "map.png") as im:
        im.load()
        assert im.size[0] > 100
    # the corrupt image is reported by uid and has no thumbnail
    assert [u for u, _ in res.unreadable] == ["u07"]
    assert res.n_thumbs == N - 1
    page = (out / "map.html").read_text()
    refs = re.findall(r'"t": "([^"]+)"', page)
    assert len(refs) == N - 1
    for ref in refs:
        assert (out / ref).is_file()
        with Image.open(out / ref) as im:
            assert max(im.size) <= 32
    assert "u07" in page and "not a readable image" in page  # shown, with the reason, without a thumbnail
    assert not re.search(r"https?://", page)  # offline: no remote resource of any kind
    assert "Title, 3" in page and "Painter 3" in page  # metadata for the hover
    _drive_the_page(out / "map.html")


def _drive_the_page(page):
    """The page in a real headless Chromium: hover shows thumbnail + metadata, click lists the cluster,
    wheel zooms, drag pans, an unreadable image is shown with its reason and without a thumbnail."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,800",
              "--disable-background-networking", "--no-first-run"):  # fmt: skip
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        canvas = driver.find_element(By.ID, "cv")
        w, h = canvas.size["width"], canvas.size["height"]

        def point_at(uid):  # screen position of a point, relative to the canvas centre (Selenium 4 offsets)
            x, y = driver.execute_script(f"const p = P.find(q => q.u === {uid!r}); return [sx(p), sy(p)];")
            return int(round(x - w / 2)), int(round(y - h / 2))

        ActionChains(driver).move_to_element_with_offset(canvas, *point_at("u03")).perform()
        tip = driver.find_element(By.ID, "tip")
        assert (
            tip.is_displayed() and "Title, 3" in tip.text and "Painter 3" in tip.text and "1503" in tip.text
        )
        loaded = driver.execute_script(
            "const i = document.querySelector('#tip img'); return i && i.complete && i.naturalWidth;"
        )
        assert loaded and loaded > 0  # the thumbnail file was found and decoded
        ActionChains(driver).move_to_element_with_offset(canvas, *point_at("u07")).perform()
        assert "image unreadable" in tip.text and not driver.find_elements(By.CSS_SELECTOR, "#tip img")
        ActionChains(driver).move_to_element_with_offset(canvas, *point_at("u03")).click().perform()
        side = driver.find_element(By.ID, "sel")
        assert "Cluster 0 (10 images)" in side.text  # labels i % 3 for i < 30: cluster 0 = u00, u03, ..., u27
        assert len(side.find_elements(By.CSS_SELECTOR, ".m")) == 10
        assert len(side.find_elements(By.CSS_SELECTOR, ".m img")) == 10 - 0  # u07 is in cluster 1, not here
        scale = driver.execute_script("return scale;")
        driver.execute_script(
            "cv.dispatchEvent(new WheelEvent('wheel', {deltaY: -300, clientX: 300, clientY: 300, bubbles: true, cancelable: true}));"
        )
        assert driver.execute_script("return scale;") > scale * 1.2
        ox = driver.execute_script("return ox;")
        ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(
            80, 0
        ).release().perform()
        assert driver.execute_script("return ox;") == pytest.approx(ox + 80, abs=2)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


@pytest.mark.slow  # UMAP again (compiled once per process)
def test_map_command_without_clusters_and_bad_clusters(tiny, tmp_path):
    tmp, root, uids = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = CliRunner().invoke(
            cli,
            [
                "map",
                str(tmp / "sig.npz"),
                "--collection",
                str(root),
                "--out",
                str(tmp / "m2"),
                "--n-neighbors",
                "5",
            ],
        )
    assert r.exit_code == 0, r.output
    # issue 11 trial: umap-learn's "n_jobs value 1 overridden to 1 by setting random_state" reached the user
    assert not [w for w in caught if "n_jobs" in str(w.message)]
    assert "image u07" in r.output and "without thumbnail" in r.output
    with open(tmp / "m2" / "coords.csv", newline="") as fh:
        assert {row["cluster"] for row in csv.DictReader(fh)} == {"-1"}
    bad = tmp / "other.csv"
    write_clusters(
        bad, ClusterTable(uids=["zz"], labels=[0], order=[0], reachability=[0.0], core_distance=[0.0])
    )
    with pytest.raises(ValueError, match="u00"):
        make_map(tmp / "sig.npz", root, tmp / "m3", clusters_path=bad)


def test_thumb_names_are_safe_and_distinct():
    assert thumb_name("abc_1") == "abc_1.jpg"
    a, b = thumb_name("a/b"), thumb_name("a?b")
    assert a != b and "/" not in a and a.endswith(".jpg")


def test_thumb_names_of_long_and_accented_uids_fit_a_file_name():
    """Issue 11, defect 6: a uid may be 256 characters; a file name may not."""
    names = [thumb_name(u) for u in ("x" * 256, "é" * 256, "x" * 255 + "y", "plain")]
    assert len(set(names)) == 4 and names[-1] == "plain.jpg"
    assert all(len(n.encode("utf-8")) <= 255 and "/" not in n for n in names)
