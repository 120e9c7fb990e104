"""`python -m cluster export`: clusters and decisions as CSV with the collection's metadata, confirmed groups as IIIF.

Driven as a user drives it (CliRunner on `cluster.__main__.cli`); every file is read back and compared with the
log and images.csv it came from.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from PIL import Image

from cluster.__main__ import cli
from cluster.annotations import (
    addition_record,
    decision_record,
    proposal_record,
    record_line,
    undo_record,
)
from cluster.clusters_file import file_sha256
from cluster.export import IIIF_CONTEXT, iiif_problems, service_version
from cluster.review import implied_edges
from data.collection import read_images, write_images

ACCENTED = 'Vierge à l\'Enfant, "Sèvres" — Ñandú'


def _decision(coll, cid: int, decision: str, ticked: list[str], *, members: list[str] | None = None,
              annotator: str = "ada", sha: str | None = None, **extra) -> dict:
    members = members if members is not None else coll.members(cid)
    edges = extra.pop("edges", None)
    if edges is None:
        edges = implied_edges(decision, members, ticked)
    rec = decision_record(cluster=cid, decision=decision, members=members, ticked=ticked, edges=edges,
                          clusters_file=str(coll.clusters), clusters_sha256=sha or file_sha256(coll.clusters),
                          annotator=annotator)
    rec.update(extra)
    return rec


def _log(coll, records: list[dict], name: str = "annotations.jsonl") -> Path:
    path = coll.root / name
    path.write_bytes(b"".join(record_line(r) for r in records))
    return path


def _export(coll, out: Path, *args: str):
    return CliRunner().invoke(cli, ["export", str(coll.root), "--clusters", str(coll.clusters), "--out", str(out),
                                    *args])


def _csv(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf"), f"{path.name}: no UTF-8 byte-order mark (Excel would garble accents)"
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def _ordered(coll, cid: int) -> list[str]:
    """A cluster's members in the order clusters.csv's `order` column gives (as the page and the export list them)."""
    with open(coll.clusters, newline="", encoding="utf-8") as fh:
        order = {r["uid"]: int(r["order"]) for r in csv.DictReader(fh)}
    return sorted(coll.members(cid), key=order.__getitem__)


def _retitle(coll, uid: str, title: str, **meta: str) -> None:
    """Give one image another title (and columns): images.csv rewritten with every column kept."""
    path = coll.root / "images.csv"
    recs = read_images(path)
    out = []
    for r in recs:
        m = dict(r.meta)
        if r.uid == uid:
            m.update(title=title, **meta)
        out.append(type(r)(uid=r.uid, path=r.path, url=r.url, meta=m, line=r.line))
    write_images(path, out)


@pytest.fixture
def decided(annot_collection):
    """Decisions on all four clusters: 2 confirmed (5 of 6 ticked), 0 confirm-and-reject, 3 wrong, 1 skipped and
    then undone (so not judged), and one more image added to cluster 2 from a search."""
    c = annot_collection
    _retitle(c, c.members(2)[0], ACCENTED)
    m2 = _ordered(c, 2)
    recs = [
        _decision(c, 2, "confirm", m2[:5], members=m2),
        _decision(c, 0, "confirm_reject", _ordered(c, 0)[:2], members=_ordered(c, 0), annotator="bea"),
        _decision(c, 3, "wrong", [], members=_ordered(c, 3)),
    ]
    skip = _decision(c, 1, "skip", [], members=_ordered(c, 1))
    added = addition_record(cluster=2, uid=c.uids[14], edges=[[*sorted((c.uids[14], m2[0])), "POSITIVE"]],
                            query={"uid": m2[0], "box": None, "score": 0.9}, clusters_file=str(c.clusters),
                            clusters_sha256=file_sha256(c.clusters), annotator="ada")
    recs += [skip, undo_record(skip["id"], "ada"), added]
    _log(c, recs)
    return c, {r["id"]: r for r in recs if r["kind"] == "decision" and r["id"] != skip["id"]}


# -- CSV -------------------------------------------------------------------------------------------------------------


def test_members_csv_has_status_ticks_annotators_and_every_metadata_column(decided, tmp_path):
    coll, in_force = decided
    r = _export(coll, tmp_path / "exp", "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = _csv(tmp_path / "exp" / "cluster_members.csv")
    images = {rec.uid: rec for rec in read_images(coll.root / "images.csv")}
    status = {int(row["cluster"]): row["status"] for row in rows}
    assert status == {2: "confirmed", 0: "confirm-and-reject", 3: "wrong", 1: "not judged"}  # the undo counts
    for cid in (0, 1, 2, 3):  # every member once, in clusters.csv order
        assert [x["uid"] for x in rows if int(x["cluster"]) == cid and not x["added_from_search"]] == _ordered(coll, cid)
    by_uid = {(x["cluster"], x["uid"]): x for x in rows}
    m2 = _ordered(coll, 2)
    assert [by_uid["2", u]["ticked"] for u in m2] == ["yes"] * 5 + ["no"]
    assert [by_uid["0", u]["ticked"] for u in _ordered(coll, 0)] == ["yes", "yes", "no"]
    assert {by_uid["1", u]["ticked"] for u in coll.members(1)} == {""}
    assert by_uid["0", coll.members(0)[0]]["annotators"] == "bea"
    confirm = next(d for d in in_force.values() if d["decision"] == "confirm")
    assert by_uid["2", m2[0]]["decision_id"] == confirm["id"] and by_uid["2", m2[0]]["decided_at"] == confirm["time"]
    # the image added from a search: a row of its cluster, marked
    added = by_uid["2", coll.uids[14]]
    assert added["added_from_search"] == "yes" and added["status"] == "confirmed"
    # every column of images.csv, values as they are there (accents, a comma, quotes)
    for (_, uid), row in by_uid.items():
        rec = images[uid]
        assert row["path"] == rec.path
        assert {k: row[k] for k in rec.meta} == rec.meta
    assert by_uid["2", coll.members(2)[0]]["title"] == ACCENTED
    assert not (tmp_path / "exp" / "iiif").exists()  # --format csv only


def test_decisions_and_connections_csv_round_trip_the_log(decided, tmp_path):
    coll, in_force = decided
    r = _export(coll, tmp_path / "exp", "--format", "csv")
    assert r.exit_code == 0, r.output
    decisions = _csv(tmp_path / "exp" / "decisions.csv")
    assert [d["decision_id"] for d in decisions] == list(in_force)  # in force, in the order made: no skip
    for d in decisions:
        rec = in_force[d["decision_id"]]
        assert (d["time"], d["annotator"], int(d["cluster"]), d["decision"]) == (
            rec["time"], rec["annotator"], rec["cluster"], rec["decision"])
        assert int(d["members"]) == len(rec["members"]) and json.loads(d["ticked"]) == rec["ticked"]
        assert int(d["connections"]) == len(rec["edges"])
    edges = _csv(tmp_path / "exp" / "decision_connections.csv")
    want = sorted((a, b, t, rec["id"], rec["annotator"]) for rec in in_force.values() for a, b, t in rec["edges"])
    assert sorted((e["a"], e["b"], e["type"], e["decision_id"], e["annotator"]) for e in edges) == want
    assert {e["type"] for e in edges} == {"POSITIVE", "NEGATIVE"}


def test_proposals_and_several_annotators(annot_collection, tmp_path):
    """A proposal from the map is exported like a cluster (kind proposal); two annotators who disagree on a
    cluster: the latest decision gives the status, both are named, the disagreement is marked."""
    c = annot_collection
    prop = proposal_record(cluster=-2, uids=[c.uids[14], c.uids[15]], note="two from the map", annotator="ada")
    (c.root / "proposals.jsonl").write_bytes(record_line(prop))
    m1 = _ordered(c, 1)
    pm = [c.uids[14], c.uids[15]]
    _log(c, [_decision(c, 1, "confirm", m1, members=m1, annotator="ada"),
             _decision(c, 1, "wrong", [], members=m1, annotator="bea"),
             _decision(c, -2, "confirm", pm, members=pm, annotator="ada")])
    r = _export(c, tmp_path / "exp")
    assert r.exit_code == 0, r.output
    rows = _csv(tmp_path / "exp" / "cluster_members.csv")
    prop_rows = [x for x in rows if x["cluster"] == "-2"]
    assert [x["kind"] for x in prop_rows] == ["proposal", "proposal"] and prop_rows[0]["status"] == "confirmed"
    one = [x for x in rows if x["cluster"] == "1"]
    assert {(x["status"], x["annotators"], x["decisions_in_force"], x["disagreement"]) for x in one} == {
        ("wrong", "ada; bea", "2", "yes")}
    # the "wrong" verdict is the latest on cluster 1: no manifest for it; the proposal's group has one
    manifests = json.loads((tmp_path / "exp" / "iiif" / "collection.json").read_text(encoding="utf-8"))["items"]
    assert [m["id"].split("-")[0] for m in manifests] == ["proposal"]


# -- IIIF ------------------------------------------------------------------------------------------------------------


def _manifests(out: Path) -> tuple[dict, list[dict]]:
    folder = out / "iiif"
    coll = json.loads((folder / "collection.json").read_text(encoding="utf-8"))
    docs = [json.loads((folder / Path(item["id"]).name).read_text(encoding="utf-8")) for item in coll["items"]]
    return coll, docs


def _check_required(doc: dict, kind: str) -> None:
    """IIIF Presentation 3.0's required properties, checked by hand (independent of `iiif_problems`); the
    @context only on the top-level resource, as the spec has it."""
    if kind != "Canvas":
        assert doc["@context"] == "http://iiif.io/api/presentation/3/context.json"
    else:
        assert "@context" not in doc and isinstance(doc["width"], int) and isinstance(doc["height"], int)
    assert doc["type"] == kind and isinstance(doc["id"], str) and doc["id"]
    label = doc["label"]
    assert isinstance(label, dict) and label and all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                                    for v in label.values())
    assert isinstance(doc["items"], list) and doc["items"]


def test_one_manifest_per_confirmed_group_with_canvases_painting_the_images(decided, tmp_path):
    coll, in_force = decided
    out = tmp_path / "exp"
    r = _export(coll, out)
    assert r.exit_code == 0, r.output
    assert "only on this machine" in r.output and "--base-url" in r.output  # local files, relative ids: said
    collection, docs = _manifests(out)
    _check_required(collection, "Collection")
    assert iiif_problems(collection) == []
    assert len(docs) == 2  # confirm and confirm-and-reject; not wrong, not the undone skip
    groups = {d["metadata"][0]["value"]["none"][0]: d for d in docs}
    m2 = _ordered(coll, 2)
    want = {"confirmed": m2[:5] + [coll.uids[14]], "confirm-and-reject": _ordered(coll, 0)[:2]}
    for status, doc in groups.items():
        _check_required(doc, "Manifest")
        assert iiif_problems(doc) == []
        uids = [c["metadata"][0]["value"]["none"][0] for c in doc["items"]]
        assert uids == want[status]
        for canvas, uid in zip(doc["items"], uids, strict=True):
            _check_required(canvas, "Canvas")
            anno = canvas["items"][0]["items"][0]
            assert anno["motivation"] == "painting" and anno["target"] == canvas["id"]
            local = (out / "iiif" / unquote(anno["body"]["id"])).resolve()  # a relative path to the image file
            assert local == (coll.root / "images" / f"{uid}.jpg").resolve()
            with Image.open(local) as im:
                assert (canvas["width"], canvas["height"]) == im.size == (anno["body"]["width"], anno["body"]["height"])
    confirmed = groups["confirmed"]
    assert ACCENTED in confirmed["label"]["none"][0]  # the group's titles
    assert "ada" in confirmed["summary"]["en"][0] and "confirmed" in confirmed["summary"]["en"][0]
    authors = {e["value"]["none"][0] for c in confirmed["items"] for e in c["metadata"] if e["label"]["en"] == ["Author"]}
    assert authors == {read_images(coll.root / "images.csv")[coll.uids.index(u)].meta["author"]
                       for u in want["confirmed"]}
    assert [i["id"] for i in collection["items"]] == [d["id"] for d in docs]


def test_iiif_image_services_urls_and_base_url(decided, tmp_path):
    """A IIIF service column (any case, an alias) is what canvases paint from, version as the URL says; a plain
    image URL comes next; --base-url makes every id absolute."""
    coll, _ = decided
    m2 = _ordered(coll, 2)
    path = coll.root / "images.csv"
    recs = read_images(path)
    services = {m2[0]: "https://iiif.example.org/iiif/2/abc%2F1/info.json", m2[1]: "https://img.example.org/iiif/3/x1/"}
    urls = {m2[2]: "https://cdn.example.org/pics/x2.png", m2[3]: "https://museum.example.org/object/3"}
    out_recs = []
    for r in recs:
        meta = {**r.meta, "IIIF_Image": services.get(r.uid, ""), "source_url": urls.get(r.uid, "")}
        out_recs.append(type(r)(uid=r.uid, path=r.path, url=r.url, meta=meta, line=r.line))
    write_images(path, out_recs)
    out = tmp_path / "exp"
    r = _export(coll, out, "--base-url", "https://example.org/groups/")
    assert r.exit_code == 0, r.output
    assert "--base-url" not in r.output
    # the column is there, empty on the rows painted from local files: the warning says so, naming them
    local_note = next(line for line in r.output.splitlines() if "local image files" in line)
    assert "no IIIF service column" not in local_note and "'IIIF_Image' is empty" in local_note, local_note
    assert m2[3] in local_note and m2[0] not in local_note, local_note
    collection, docs = _manifests(out)
    doc = next(d for d in docs if len(d["items"]) == 6)
    bodies = {c["metadata"][0]["value"]["none"][0]: c["items"][0]["items"][0]["body"] for c in doc["items"]}
    v2 = bodies[m2[0]]
    assert v2["id"] == "https://iiif.example.org/iiif/2/abc%2F1/full/max/0/default.jpg"
    assert v2["service"] == [{"@id": "https://iiif.example.org/iiif/2/abc%2F1", "@type": "ImageService2",
                              "profile": "http://iiif.io/api/image/2/level0.json"}]
    v3 = bodies[m2[1]]
    assert v3["id"] == "https://img.example.org/iiif/3/x1/full/max/0/default.jpg"
    assert v3["service"][0]["type"] == "ImageService3" and v3["service"][0]["id"] == "https://img.example.org/iiif/3/x1"
    assert bodies[m2[2]]["id"] == urls[m2[2]] and bodies[m2[2]]["format"] == "image/png"
    assert not bodies[m2[3]]["id"].startswith("http")  # a web page is no image: the local file
    for d in [collection, *docs]:
        assert iiif_problems(d) == []
        assert d["id"].startswith("https://example.org/groups/") and d["id"].endswith(".json")
    assert all(c["id"].startswith("https://example.org/groups/") for d in docs for c in d["items"])
    # forced version
    assert service_version("https://x.org/iiif/2/a", "3") == "3" and service_version("https://x.org/a") == "3"


def test_split_groups_become_manifests_and_a_split_without_groups_is_none(annot_collection, tmp_path):
    c = annot_collection
    m2 = _ordered(c, 2)
    groups = [m2[:3], m2[3:5], [m2[5]]]
    split = _decision(c, 2, "split", m2[:6], members=m2, edges=[[*sorted(m2[:2]), "POSITIVE"]], groups=groups)
    odd = _decision(c, 0, "split", [], members=_ordered(c, 0), edges=[])  # a split without its groups
    _log(c, [split, odd])
    out = tmp_path / "exp"
    r = _export(c, out)
    assert r.exit_code == 0, r.output
    _, docs = _manifests(out)
    got = sorted([c["metadata"][0]["value"]["none"][0] for c in d["items"]] for d in docs)
    assert got == sorted(groups[:2])  # a group of one is no pattern group
    rows = {x["uid"]: x for x in _csv(out / "cluster_members.csv") if x["cluster"] == "2"}
    assert [rows[u]["group"] for u in m2] == ["1", "1", "1", "2", "2", "3"]
    assert {rows[u]["status"] for u in m2} == {"split"}
    assert all(iiif_problems(d) == [] for d in docs)


def test_iiif_check_sees_what_is_missing():
    """The checker itself: each required property taken away is reported."""
    good = {"@context": IIIF_CONTEXT, "id": "m.json", "type": "Manifest", "label": {"none": ["x"]},
            "items": [{"id": "m/c/1", "type": "Canvas", "width": 10, "height": 10, "items": [
                {"id": "m/c/1/p", "type": "AnnotationPage", "items": [
                    {"id": "m/c/1/p/a", "type": "Annotation", "motivation": "painting", "target": "m/c/1",
                     "body": {"id": "x.jpg", "type": "Image"}}]}]}]}
    assert iiif_problems(good) == []
    for key in ("@context", "id", "label", "items"):
        assert iiif_problems({k: v for k, v in good.items() if k != key}), key
    assert iiif_problems({**good, "label": "plain string"})
    canvas = good["items"][0]
    assert iiif_problems({**good, "items": [{k: v for k, v in canvas.items() if k != "width"}]})


# -- reruns and bad input --------------------------------------------------------------------------------------------


def test_rerun_gives_the_same_bytes_and_replaces_an_older_export(decided, tmp_path):
    coll, _ = decided
    out = tmp_path / "exp"
    assert _export(coll, out).exit_code == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert _export(coll, out).exit_code == 0
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    assert _export(coll, out, "--format", "csv").exit_code == 0  # the whole folder replaced: no stale manifests
    assert sorted(p.name for p in out.iterdir()) == ["cluster_members.csv", "decision_connections.csv",
                                                    "decisions.csv", "export.json"]


def _one_line_error(r, *words: str) -> None:
    assert r.exit_code != 0
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # a ClickException, not a crash
    assert "Traceback" not in r.output
    lines = [x for x in r.output.splitlines() if x.startswith("Error")]
    assert len(lines) == 1, r.output
    for w in words:
        assert w in lines[0], r.output


def test_no_decisions_yet_is_one_sentence(annot_collection, tmp_path):
    r = _export(annot_collection, tmp_path / "exp")
    _one_line_error(r, "annotations.jsonl", "no decisions yet", "cluster annotate")
    d = _decision(annot_collection, 1, "wrong", [], members=_ordered(annot_collection, 1))
    _log(annot_collection, [d, undo_record(d["id"], "ada")])
    _one_line_error(_export(annot_collection, tmp_path / "exp"), "no decision in force")
    assert not (tmp_path / "exp").exists()


def test_decisions_made_on_another_clusters_file(annot_collection, tmp_path):
    """None of the decisions made on this clusters file and no cluster with decided members: refused; some: said."""
    c = annot_collection
    other = "f" * 64
    _log(c, [_decision(c, 1, "confirm", c.uids[:2], members=c.uids[:2], sha=other)])
    _one_line_error(_export(c, tmp_path / "exp"), "another clusters file", "--clusters")
    m1 = _ordered(c, 1)
    _log(c, [_decision(c, 1, "confirm", m1, members=m1, sha=other)])  # same members: the verdict still applies
    r = _export(c, tmp_path / "exp")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "another clusters file" in r.output
    assert {x["status"] for x in _csv(tmp_path / "exp" / "cluster_members.csv") if x["cluster"] == "1"} == {"confirmed"}


def test_unwritable_or_foreign_out_dir(decided, tmp_path, monkeypatch):
    coll, _ = decided
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_line_error(_export(coll, blocker / "exp"), "cannot write the export", "--out")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    _one_line_error(_export(coll, foreign), "holds other files", "notes.txt")
    assert (foreign / "notes.txt").read_text() == "keep me"

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr("tempfile.mkdtemp", refuse)
    _one_line_error(_export(coll, tmp_path / "ro"), "Permission denied", "--out")


def test_bad_options_are_usage_errors(decided, tmp_path):
    coll, _ = decided
    r = _export(coll, tmp_path / "exp", "--format", "csv,pdf")
    assert r.exit_code == 2 and "csv, iiif" in r.output
    r = _export(coll, tmp_path / "exp", "--base-url", "example.org/x")
    assert r.exit_code == 2 and "http(s)" in r.output
    assert not (tmp_path / "exp").exists()


def test_ctrl_c_during_export_is_one_line(decided, tmp_path, monkeypatch):
    """Found in a trial: Ctrl-C in `export` printed click's bare "Aborted!". It is one line saying what is left
    (exit 130), and no export folder appears."""
    import cluster.export as export_module

    coll, _ = decided

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "write_export", interrupted)
    r = _export(coll, tmp_path / "exp")
    assert r.exit_code == 130 and "Traceback" not in r.output and "Aborted" not in r.output, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("interrupted:") and "run the same command again" in last, r.output
    assert not (tmp_path / "exp").exists()
