"""The run report: retrieval before/after, the gallery's known/new pair counts, embedded pictures, CLI."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner
from PIL import Image

from cluster.__main__ import cli
from cluster.report import ReportInputs, build_report, cluster_gallery, retrieval_table
from data.collection import load_collection

from .conftest import CLUSTERS, EXPECTED_QUEUE


def _metrics(m_ap: float) -> dict:
    return {"mAP": m_ap, "recall@1": m_ap / 2, "recall@10": m_ap, "num_queries": 7, "median_first_rank": 3.0}


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ev = {"start": {"val": _metrics(0.125), "test": _metrics(0.25)},
          "trained": {"val": _metrics(0.5), "test": _metrics(0.625)}}
    (run / "eval.json").write_text(json.dumps(ev))
    Image.new("RGB", (40, 30), (200, 10, 10)).save(run / "curves.png")
    return run


def test_retrieval_table_lists_start_and_trained_per_split():
    ev = {"start": {"test": _metrics(0.25)}, "trained": {"test": _metrics(0.625)}}
    html = retrieval_table(ev)
    assert html.count("<tr>") == 3  # header + start + trained
    assert "0.250" in html and "0.625" in html and "untrained" in html and "fine-tuned" in html


def test_gallery_counts_known_and_new_pairs_in_review_order(annot_collection):
    inputs = ReportInputs(collection=annot_collection.root, clusters=annot_collection.clusters)
    _, summary = cluster_gallery(inputs, load_collection(annot_collection.root))
    assert [s["cluster"] for s in summary] == EXPECTED_QUEUE
    by_id = {s["cluster"]: s for s in summary}
    # cluster 2 has 6 members (15 pairs), 3 of them known (POSITIVE, DUPLICATE, NEGATIVE) in conftest.KNOWN
    assert by_id[2]["pairs"] == 15 and by_id[2]["known"] == 3 and by_id[2]["new"] == 12
    # cluster 1: its three members are all connected already
    assert by_id[1]["size"] == len(CLUSTERS[1]) and by_id[1]["known"] == 3 and by_id[1]["new"] == 0


def test_report_cli_writes_self_contained_page(annot_collection, tmp_path):
    run = _run_dir(tmp_path)
    out = tmp_path / "report.html"
    res = CliRunner().invoke(cli, ["report", "--collection", str(annot_collection.root), "--clusters",
                                   str(annot_collection.clusters), "--run", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "0.625" in page and "0.125" in page
    assert page.count("data:image/jpeg;base64,") >= sum(min(len(m), 8) for m in CLUSTERS.values())
    assert "data:image/png;base64," in page  # the training curve is embedded
    assert not re.search(r"src=['\"]https?://", page)  # nothing fetched from the network
    assert "python -m cluster annotate" in page


def test_report_marks_unreadable_images_without_failing(annot_collection, tmp_path):
    uid = annot_collection.members(2)[0]
    (annot_collection.root / "images" / f"{uid}.jpg").write_bytes(b"not a jpeg")
    page = build_report(ReportInputs(collection=annot_collection.root, clusters=annot_collection.clusters))
    assert "unreadable" in page


def _big_cluster_collection(root, size: int, small: int = 30):
    """images.csv rows only (no image files: the report shows them as unreadable), one cluster of `size`
    members, `small` two-member clusters, and a chain of POSITIVE links inside the big one."""
    import numpy as np

    from cluster.clusters_file import ClusterTable, write_clusters
    from data.collection import Connection, write_connections

    root.mkdir()
    n = size + 2 * small
    uids = [f"u{i:06d}" for i in range(n)]
    (root / "images.csv").write_text("uid,path\n" + "".join(f"{u},images/{u}.jpg\n" for u in uids))
    links = [Connection(uids[i], uids[i + 1], "POSITIVE") for i in range(0, 99)]
    write_connections(root / "connections.csv", links)
    labels = np.array([0] * size + [1 + i // 2 for i in range(2 * small)])
    write_clusters(root / "clusters.csv", ClusterTable(
        uids=uids, labels=labels, order=np.arange(n), reachability=np.full(n, 0.1),
        core_distance=np.full(n, 0.05), params={"method": "test"}))
    return root


def test_a_big_cluster_is_cut_with_a_count_and_only_shown_members_get_thumbnails(tmp_path, monkeypatch):
    import cluster.report as report

    root = _big_cluster_collection(tmp_path / "big", 20_000)
    made = []
    monkeypatch.setattr(report, "_thumb_uri", lambda thumbs, uid: made.append(uid))
    out = tmp_path / "report.html"
    res = CliRunner().invoke(cli, ["report", "--collection", str(root), "--clusters", str(root / "clusters.csv"),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "showing 8 of 20,000 members" in page
    assert "199,990,000 pairs" in page and "99 known" in page  # C(20000, 2); the 99 links of the chain
    assert "showing the top 12 of 31 clusters" in page
    assert len(made) == 8 + 11 * 2  # thumbnails only for what the page shows


def test_the_map_link_works_from_wherever_the_report_is_written(annot_collection, tmp_path, monkeypatch):
    """Trial of issue 14: `--out` in another folder than the clusters' linked `map/map.html` beside the report."""
    mapdir = tmp_path / "results" / "map"
    mapdir.mkdir(parents=True)
    (mapdir / "map.html").write_text("<!DOCTYPE html><title>map</title>")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["report", "--collection", str(annot_collection.root), "--clusters",
                                 str(annot_collection.clusters), "--map", "results/map", "--out", "elsewhere/r.html"])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "elsewhere" / "r.html").read_text(encoding="utf-8")
    href = re.search(r"href='([^']*map\.html)'", page).group(1)
    assert (tmp_path / "elsewhere" / href).resolve() == (mapdir / "map.html").resolve()


def _missed_section(annot_collection, tmp_path, links: list[tuple[int, int, str]]) -> str:
    """connections.csv set to `links` (uid numbers), then `cluster report`'s page from its missed-groups heading on."""
    from data.collection import Connection, write_connections

    u = annot_collection.uids
    write_connections(annot_collection.root / "connections.csv", [Connection(u[a], u[b], t) for a, b, t in links])
    out = tmp_path / "report.html"
    res = CliRunner().invoke(cli, ["report", "--collection", str(annot_collection.root), "--clusters",
                                   str(annot_collection.clusters), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    return page[page.index("Known groups the clustering missed"):]


def test_the_report_lists_the_known_groups_no_cluster_found(annot_collection, tmp_path):
    from tests.cluster.conftest import KNOWN

    u = annot_collection.uids
    section = _missed_section(annot_collection, tmp_path, [*KNOWN, (8, 10, "POSITIVE")])
    assert "2 known pattern group(s) of 4 images" in section
    assert f"({min(u[8], u[10])}) <span>" in section and f"({min(u[14], u[15])}) <span>" in section  # “title” (uid)
    assert "cluster 0</span>" in section and "cluster 3</span>" in section and section.count(">noise</span>") == 2


def test_gallery_captions_read_a_museums_own_column_names(annot_collection, tmp_path):
    """images.csv saved with its own header ("Titolo", "AUTORE"): the report's captions still show them."""
    import shutil

    root = tmp_path / "coll"
    shutil.copytree(annot_collection.root, root)
    text = (root / "images.csv").read_text(encoding="utf-8")
    (root / "images.csv").write_text(text.replace("uid,path,title,author,", "uid,path,Titolo,AUTORE,", 1),
                                     encoding="utf-8")  # fmt: skip
    import html

    coll = load_collection(root)
    shown = coll.images[CLUSTERS[1][0]].meta
    assert "title" not in shown and shown["Titolo"] and shown["AUTORE"]
    page, _ = cluster_gallery(ReportInputs(collection=root, clusters=annot_collection.clusters), coll)
    assert html.escape(f"{shown['Titolo']} · {shown['AUTORE']}") in page


def test_a_run_without_test_queries_says_so_in_the_report(annot_collection, tmp_path):
    """A collection with no test group (connections.csv's split column: train and val only): the run's last line
    says `no test queries ... so no test mAP`; the report said nothing, only rows of dashes with 0 queries."""
    run = _run_dir(tmp_path)
    ev = json.loads((run / "eval.json").read_text())
    for which in ("start", "trained"):
        ev[which]["test"] = {"num_queries": 0.0}
    (run / "eval.json").write_text(json.dumps(ev))
    out = tmp_path / "report.html"
    res = CliRunner().invoke(cli, ["report", "--collection", str(annot_collection.root), "--clusters",
                                   str(annot_collection.clusters), "--run", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "No test queries (no image of split test has a partner)" in page
    assert "No test queries" not in retrieval_table(json.loads(json.dumps({**ev, "trained": {
        **ev["trained"], "test": _metrics(0.5)}})))


def test_the_reports_missed_groups_are_named_by_a_title_as_on_the_annotation_page(annot_collection, tmp_path):
    """The annotation page names a known group by its naming member's title, then its uid (“Madonna col Bambino”
    (ms020)); the report's list of missed groups said `group ms020` only."""
    import html

    u = annot_collection.uids
    section = _missed_section(annot_collection, tmp_path, [(8, 10, "POSITIVE")])
    name = min(u[8], u[10])
    title = load_collection(annot_collection.root).record(name).meta["title"]
    assert title and html.escape(f"group “{title}” ({name})") in section
