"""accept: decisions -> connections.csv rows; idempotent, backed up, contradictions reported."""

from click.testing import CliRunner

from cluster.accept import accept, accept_annotations
from cluster.annotate.store import AnnotationStore
from data.collection import read_connections


def _decide(store, members, ticked, edges, decision="confirm"):
    return store.decide(cluster=0, decision=decision, members=members, ticked=ticked, edges=edges,
                        clusters_file="clusters.csv", clusters_sha256="0" * 64, annotator="ada")


def _rows(coll):
    return read_connections(coll.root / "connections.csv")


def test_accept_adds_rows_once_with_round_and_time(annot_collection):
    u = annot_collection.uids
    before = _rows(annot_collection)
    store = AnnotationStore(annot_collection.root)
    d1 = _decide(store, u[:4], u[1:4], [[u[1], u[2], "POSITIVE"], [u[1], u[3], "POSITIVE"], [u[2], u[3], "POSITIVE"],
                                         [u[0], u[1], "NEGATIVE"]], "confirm_reject")
    d2 = _decide(store, u[6:9], u[7:9], [[u[7], u[8], "SIMILAR"]], "similar")
    d3 = _decide(store, u[9:11], u[9:11], [[u[9], u[10], "DUPLICATE"]], "duplicate")
    store.undo(d3["id"], "ada")
    # u0-u1 is POSITIVE in connections.csv: the NEGATIVE is a contradiction
    rep = accept_annotations(annot_collection.root)
    assert rep.round == 1 and rep.decisions == 2 and rep.undone == 1
    assert dict(rep.added) == {"POSITIVE": 3, "SIMILAR": 1}
    assert [(c.a, c.b, c.type, c.existing) for c in rep.contradictions] == [
        (*sorted((u[0], u[1])), "NEGATIVE", "POSITIVE")]
    assert rep.contradictions[0].decision == d1["id"]
    assert rep.backup is not None and rep.backup.name.startswith("connections.csv.bak-")
    assert read_connections(rep.backup) == before
    after = _rows(annot_collection)
    assert [(c.a, c.b, c.type) for c in after[: len(before)]] == [(c.a, c.b, c.type) for c in before]
    new = after[len(before):]
    assert {(c.a, c.b, c.type) for c in new} == {
        (*sorted((u[1], u[2])), "POSITIVE"), (*sorted((u[1], u[3])), "POSITIVE"),
        (*sorted((u[2], u[3])), "POSITIVE"), (*sorted((u[7], u[8])), "SIMILAR")}
    assert all(c.source == "annotation:1" for c in new)
    assert {c.annotated_at for c in new} == {d1["time"], d2["time"]}
    assert all(c.split is None for c in new)  # splits are assigned by data.splits

    # running again adds nothing and leaves the file (and the backups) alone
    text = (annot_collection.root / "connections.csv").read_text()
    rep2 = accept_annotations(annot_collection.root)
    assert not rep2.added and not rep2.written and rep2.skipped == 4 and len(rep2.contradictions) == 1
    assert (annot_collection.root / "connections.csv").read_text() == text
    assert len(list(annot_collection.root.glob("connections.csv.bak-*"))) == 1

    # a later decision is the next round
    _decide(store, u[9:11], u[9:11], [[u[9], u[10], "POSITIVE"]])
    rep3 = accept_annotations(annot_collection.root)
    assert rep3.round == 2 and dict(rep3.added) == {"POSITIVE": 1} and rep3.skipped == 4
    assert _rows(annot_collection)[-1].source == "annotation:2"
    assert len(list(annot_collection.root.glob("connections.csv.bak-*"))) == 2


def test_contradiction_inside_the_annotations(annot_collection):
    u = annot_collection.uids
    store = AnnotationStore(annot_collection.root)
    _decide(store, u[9:11], u[9:11], [[u[9], u[10], "POSITIVE"]])
    _decide(store, u[9:11], [u[9]], [[u[10], u[9], "NEGATIVE"]], "confirm_reject")
    rep = accept_annotations(annot_collection.root, round=7)
    assert dict(rep.added) == {"POSITIVE": 1} and len(rep.contradictions) == 1
    assert _rows(annot_collection)[-1].source == "annotation:7"


def test_accept_without_connections_file_and_with_torn_log(annot_collection):
    u = annot_collection.uids
    (annot_collection.root / "connections.csv").unlink()
    store = AnnotationStore(annot_collection.root)
    _decide(store, u[:2], u[:2], [[u[0], u[1], "POSITIVE"]])
    with open(annot_collection.root / "annotations.jsonl", "a") as fh:
        fh.write('{"kind": "decision", "id": "half')
    rep = accept_annotations(annot_collection.root)
    assert rep.backup is None and dict(rep.added) == {"POSITIVE": 1}
    assert any("incomplete last line" in n for n in rep.notes)
    assert [(c.a, c.b, c.type, c.source) for c in _rows(annot_collection)] == [
        (*sorted(u[:2]), "POSITIVE", "annotation:1")]


def test_cli_prints_what_changed(annot_collection):
    u = annot_collection.uids
    store = AnnotationStore(annot_collection.root)
    _decide(store, u[6:9], u[7:9], [[u[7], u[8], "POSITIVE"]])
    runner = CliRunner()
    r = runner.invoke(accept, ["--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    assert "added: 1 POSITIVE" in r.output and "skipped (already present): 0" in r.output
    assert "backed up to" in r.output
    r = runner.invoke(accept, ["--collection", str(annot_collection.root)])
    assert r.exit_code == 0 and "added: nothing" in r.output and "skipped (already present): 1" in r.output
    # a damaged log is a clear error, not a traceback
    with open(annot_collection.root / "annotations.jsonl", "r+") as fh:
        lines = fh.read().splitlines()
        fh.seek(0)
        fh.write("garbage\n" + "\n".join(lines) + "\n")
    r = runner.invoke(accept, ["--collection", str(annot_collection.root)])
    assert r.exit_code != 0 and "annotations.jsonl:1" in r.output
    assert runner.invoke(accept, ["--collection", str(annot_collection.root), "--round", "0"]).exit_code != 0


def test_unknown_uids_are_reported_not_written(annot_collection):
    bad = "nosuchuid"
    u = annot_collection.uids
    store = AnnotationStore(annot_collection.root)
    _decide(store, [u[0], bad], [u[0], bad], [[u[0], bad, "POSITIVE"]])
    before = (annot_collection.root / "connections.csv").read_text()
    rep = accept_annotations(annot_collection.root)
    assert rep.unknown == [bad] and not rep.added
    assert (annot_collection.root / "connections.csv").read_text() == before
