"""annotations.jsonl: durable appends, torn last lines, damaged lines."""

import json

import pytest

from cluster.annotate.store import AnnotationError, AnnotationStore, TornLineWarning, read_log


def _decide(store, cluster, edges=()):
    return store.decide(cluster=cluster, decision="confirm", members=["a", "b", "c"], ticked=["a", "b"],
                        edges=[list(e) for e in edges], clusters_file="c.csv", clusters_sha256="0" * 64,
                        annotator="ada")


def test_append_read_and_undo(tmp_path):
    s = AnnotationStore(tmp_path)
    d1 = _decide(s, 1, [("a", "b", "POSITIVE")])
    d2 = _decide(s, 2)
    s.undo(d2["id"], "ada")
    text = (tmp_path / "annotations.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 3
    log = read_log(tmp_path / "annotations.jsonl")
    assert [r["id"] for r in log.active_decisions()] == [d1["id"]]
    assert log.undone_ids() == {d2["id"]}
    assert AnnotationStore(tmp_path).last_active_decision()["id"] == d1["id"]
    assert read_log(tmp_path / "missing.jsonl").records == []


def test_torn_last_line_is_reported_and_ignored(tmp_path):
    s = AnnotationStore(tmp_path)
    d1 = _decide(s, 1)
    path = tmp_path / "annotations.jsonl"
    full = json.dumps({"kind": "decision", "id": "x", "members": [], "ticked": [], "edges": []})
    with open(path, "a") as fh:
        fh.write(full)  # complete JSON but no newline: never acknowledged, still torn
    with pytest.warns(TornLineWarning, match=r"annotations.jsonl:2: incomplete last line"):
        log = read_log(path)
    assert [r["id"] for r in log.records] == [d1["id"]]
    # the writer moves the torn bytes aside before appending, so they never end up mid-file
    s2 = AnnotationStore(tmp_path)
    assert any("incomplete last line" in n for n in s2.notes)
    _decide(s2, 2)
    log = read_log(path)
    assert len(log.records) == 2 and not log.torn_tail


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{oops", "not a JSON line"),
        ("[1, 2]", "JSON object"),
        ('{"kind": "vote", "id": "q"}', "unknown record kind"),
        ('{"kind": "undo", "id": "q"}', "undoes"),
        ('{"kind": "decision", "id": "q", "members": [], "ticked": [], "edges": [["a", "b", "LIKE"]]}', "edge"),
        ('{"kind": "decision", "id": "q", "members": [], "ticked": [], "edges": [["a", "a", "POSITIVE"]]}', "edge"),
    ],
)
def test_damaged_middle_line_is_an_error_naming_the_line(tmp_path, line, match):
    s = AnnotationStore(tmp_path)
    _decide(s, 1)
    path = tmp_path / "annotations.jsonl"
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.write(json.dumps({"kind": "undo", "id": "later", "undoes": "x"}) + "\n")
    with pytest.raises(AnnotationError, match=match) as e:
        read_log(path)
    assert "annotations.jsonl:2" in str(e.value)
    # the writer refuses to append after a damaged line rather than bury it
    with pytest.raises(AnnotationError, match="annotations.jsonl:2"):
        _decide(s, 2)


def test_repeated_id_is_an_error(tmp_path):
    s = AnnotationStore(tmp_path)
    d = _decide(s, 1)
    s.append(dict(d))
    with pytest.raises(AnnotationError, match="appears twice"):
        read_log(tmp_path / "annotations.jsonl")
