"""annotations.jsonl: durable appends, torn last lines, damaged lines."""

import json

import pytest

from cluster.annotate.store import AnnotationStore
from cluster.annotations import AnnotationError, TornLineWarning, read_log


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
        fh.write(full[:-3])  # a write cut short: never acknowledged
    with pytest.warns(TornLineWarning, match=r"annotations.jsonl:2: incomplete last line"):
        log = read_log(path)
    assert [r["id"] for r in log.records] == [d1["id"]]
    # the writer moves the torn bytes aside before appending, so they never end up mid-file
    s2 = AnnotationStore(tmp_path)
    assert any("incomplete last line" in n for n in s2.notes)
    _decide(s2, 2)
    log = read_log(path)
    assert len(log.records) == 2 and not log.torn_tail
    assert [p.read_text() for p in tmp_path.glob("annotations.jsonl.torn-*")] == [full[:-3]]


def test_whole_last_record_without_newline_is_kept(tmp_path):
    """An editor that saved the log without a final newline must not cost the last (acknowledged) record."""
    s = AnnotationStore(tmp_path)
    d1 = _decide(s, 1)
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    with pytest.warns(TornLineWarning, match=r"annotations.jsonl:1: .*complete record without its final newline"):
        log = read_log(path)
    assert [r["id"] for r in log.records] == [d1["id"]] and log.unterminated
    d2 = _decide(s, 2)  # the running writer completes the line, then appends
    assert [r["id"] for r in read_log(path).records] == [d1["id"], d2["id"]]
    assert any("no final newline" in n for n in s.notes)
    assert not list(tmp_path.glob("annotations.jsonl.torn-*"))


def test_last_line_that_parses_but_is_no_record_is_an_error(tmp_path):
    s = AnnotationStore(tmp_path)
    _decide(s, 1)
    with open(tmp_path / "annotations.jsonl", "a") as fh:
        fh.write('{"kind": "vote", "id": "q"}')
    with pytest.raises(AnnotationError, match=r"annotations.jsonl:2: unknown record kind"):
        read_log(tmp_path / "annotations.jsonl")


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


def test_two_processes_appending_at_once_lose_and_cut_nothing(tmp_path):
    """Two servers on one collection: the tail check before each append must never take the other's line
    in progress for a torn one (appends hold a flock), and every record must arrive whole."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys\n"
        "from cluster.annotate.store import AnnotationStore\n"
        "s = AnnotationStore(sys.argv[1])\n"
        "members = [f'u{i:05d}' for i in range(3000)]\n"  # ~30 KB lines: a write spans several pages
        "for k in range(60):\n"
        "    s.decide(cluster=k, decision='wrong', members=members, ticked=[], edges=[], clusters_file='c.csv',\n"
        "             clusters_sha256='0' * 64, annotator=sys.argv[2])\n"
    )
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), who], cwd=root) for who in ("ada", "bob")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    log = read_log(tmp_path / "annotations.jsonl")
    assert not log.torn_tail and sorted(r["annotator"] for r in log.records) == ["ada"] * 60 + ["bob"] * 60
    assert not list(tmp_path.glob("annotations.jsonl.torn-*"))
