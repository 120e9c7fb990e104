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
    # u0-u1 is POSITIVE in connections.csv: the NEGATIVE is a contradiction; u2-u3 is DUPLICATE there, which
    # implies POSITIVE: already known, not written (issue 16: `data check` warned about it for good)
    rep = accept_annotations(annot_collection.root)
    assert rep.round == 1 and rep.decisions == 2 and rep.undone == 1
    assert dict(rep.added) == {"POSITIVE": 2, "SIMILAR": 1} and rep.implied == 1
    assert [(c.a, c.b, c.type, c.existing) for c in rep.contradictions] == [
        (*sorted((u[0], u[1])), "NEGATIVE", "POSITIVE")]
    assert rep.contradictions[0].decision == d1["id"]
    assert rep.backup is not None and rep.backup.name.startswith("connections.csv.bak-")
    assert read_connections(rep.backup) == before
    after = _rows(annot_collection)
    assert [(c.a, c.b, c.type) for c in after[: len(before)]] == [(c.a, c.b, c.type) for c in before]
    new = after[len(before):]
    assert {(c.a, c.b, c.type) for c in new} == {
        (*sorted((u[1], u[2])), "POSITIVE"), (*sorted((u[1], u[3])), "POSITIVE"), (*sorted((u[7], u[8])), "SIMILAR")}
    assert all(c.source == "annotation:1" for c in new)
    assert {c.annotated_at for c in new} == {d1["time"], d2["time"]}
    assert all(c.split is None for c in new)  # splits are assigned by data.splits

    # running again adds nothing and leaves the file (and the backups) alone
    text = (annot_collection.root / "connections.csv").read_text()
    rep2 = accept_annotations(annot_collection.root)
    assert not rep2.added and not rep2.written and rep2.skipped == 3 and rep2.implied == 1
    assert len(rep2.contradictions) == 1
    assert (annot_collection.root / "connections.csv").read_text() == text
    assert len(list(annot_collection.root.glob("connections.csv.bak-*"))) == 1

    # a later decision is the next round
    _decide(store, u[9:11], u[9:11], [[u[9], u[10], "POSITIVE"]])
    rep3 = accept_annotations(annot_collection.root)
    assert rep3.round == 2 and dict(rep3.added) == {"POSITIVE": 1} and rep3.skipped == 3
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
    assert r.exit_code == 0 and "skipped (already present): 1" in r.output
    # a run that adds nothing names no round (it used to announce "annotation round 2")
    assert "nothing new to add; connections.csv unchanged." in r.output and "round" not in r.output
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


def _write_bytes(path, rows, *, encoding="utf-8", delimiter=",", bom=b""):
    path.write_bytes(bom + "".join(delimiter.join(r) + "\r\n" for r in rows).encode(encoding))


def test_accept_keeps_the_museums_columns_in_order(annot_collection):
    """Issue 11, defect 2: accept used to drop every column it does not know (comment, reviewer)."""
    u = annot_collection.uids
    path = annot_collection.root / "connections.csv"
    _write_bytes(path, [["reviewer", "a", "b", "comment", "type"],
                        ["ada", u[0], u[1], '"seen 1998, drawer 12"', "POSITIVE"],
                        ["bob", u[11], u[12], "", "POSITIVE"]])
    store = AnnotationStore(annot_collection.root)
    _decide(store, u[6:9], u[7:9], [[u[7], u[8], "POSITIVE"]])
    r = CliRunner().invoke(accept, ["--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "reviewer,a,b,comment,type,source,annotated_at"
    assert lines[1] == f'ada,{u[0]},{u[1]},"seen 1998, drawer 12",POSITIVE,,'
    assert lines[2] == f"bob,{u[11]},{u[12]},,POSITIVE,,"
    a, b = sorted(u[7:9])
    assert lines[3].startswith(f",{a},{b},,POSITIVE,annotation:1,")


def test_accept_rewrites_an_excel_file_as_utf8_and_says_so(annot_collection):
    """Issue 11, defect 4: a Windows-1252, semicolon-separated connections.csv (European Excel)."""
    u = annot_collection.uids
    path = annot_collection.root / "connections.csv"
    _write_bytes(path, [["a", "b", "type", "remarque"], [u[0], u[1], "POSITIVE", "vérifié"]],
                 encoding="cp1252", delimiter=";")
    original = path.read_bytes()
    store = AnnotationStore(annot_collection.root)
    _decide(store, u[6:9], u[7:9], [[u[7], u[8], "POSITIVE"]])
    r = CliRunner().invoke(accept, ["--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    assert "Windows-1252" in r.output and "rewritten as UTF-8" in r.output
    backup = next(annot_collection.root.glob("connections.csv.bak-*"))
    assert backup.read_bytes() == original
    text = path.read_bytes().decode("utf-8-sig")
    assert text.splitlines()[:2] == ["a;b;type;remarque;source;annotated_at", f"{u[0]};{u[1]};POSITIVE;vérifié;;"]
    assert [c.extra for c in _rows(annot_collection)][:1] == [{"remarque": "vérifié"}]


def test_undo_after_accept_is_said_on_the_page_and_accept_removes_the_rows(annot_collection):
    """Issue 11, defect 10: an undone decision's accepted rows used to stay in connections.csv, with no word."""
    from cluster.annotate.app import create_app

    u = annot_collection.uids
    app = create_app(annot_collection.root, annot_collection.clusters, "ada")
    c = app.test_client()
    ticked = [u[0], u[2]]  # no known link between them
    d = c.post("/api/decision", json={"cluster": 2, "decision": "confirm", "ticked": ticked}).get_json()
    runner = CliRunner()
    assert runner.invoke(accept, ["--collection", str(annot_collection.root)]).exit_code == 0
    path = annot_collection.root / "connections.csv"
    accepted = path.read_text()
    r = c.post("/api/undo", json={"decision": d["id"]})
    assert r.status_code == 200
    assert "already accepted into connections.csv" in r.get_json()["note"]
    # a later decision is kept; the undone one's row goes, listed, with a backup holding it
    store = AnnotationStore(annot_collection.root)
    _decide(store, u[9:11], u[9:11], [[u[9], u[10], "SIMILAR"]], "similar")
    r = runner.invoke(accept, ["--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    a, b = sorted(ticked)
    assert "removed (their decision was undone after it was accepted): 1" in r.output
    assert f"{a} {b} POSITIVE" in r.output and d["id"] in r.output
    rows = _rows(annot_collection)
    assert (a, b) not in {x.pair for x in rows}
    assert (*sorted(u[9:11]), "SIMILAR") in {(*x.pair, x.type) for x in rows}
    assert any(p.read_text() == accepted for p in annot_collection.root.glob("connections.csv.bak-*"))
    # idempotent: nothing more to remove or add
    r = runner.invoke(accept, ["--collection", str(annot_collection.root)])
    assert "removed" not in r.output and "nothing new to add; connections.csv unchanged." in r.output
    # a second undo of a decision never accepted says nothing about connections.csv
    last = c.get("/api/state").get_json()["last_decision"]
    d2 = c.post("/api/decision", json={"cluster": 0, "decision": "wrong", "ticked": []}).get_json()
    assert last is not None and d2["ok"]
    assert c.post("/api/undo", json={"decision": d2["id"]}).get_json().get("note") is None


def test_a_hand_edited_row_of_an_undone_decision_stays(annot_collection):
    u = annot_collection.uids
    store = AnnotationStore(annot_collection.root)
    d = _decide(store, u[9:11], u[9:11], [[u[9], u[10], "DUPLICATE"]], "duplicate")
    accept_annotations(annot_collection.root)
    path = annot_collection.root / "connections.csv"
    path.write_text(path.read_text().replace("DUPLICATE,annotation:1", "SIMILAR,annotation:1"))
    store.undo(d["id"], "ada")
    rep = accept_annotations(annot_collection.root)
    assert not rep.removed and not rep.written


def _csv_rows(path):
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _write_csv(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


def test_undo_after_accept_keeps_a_row_a_curator_has_written_in(annot_collection):
    """Issue 11 trial: undo after accept removed an accepted row whose `comment` a curator had filled since."""
    u = annot_collection.uids
    path = annot_collection.root / "connections.csv"
    rows = _csv_rows(path)
    _write_csv(path, [rows[0] + ["comment"]] + [r + [""] for r in rows[1:]])
    store = AnnotationStore(annot_collection.root)
    ticked = [u[8], u[9], u[10]]  # three new POSITIVE pairs
    d = _decide(store, ticked, ticked, [[a, b, "POSITIVE"] for i, a in enumerate(ticked) for b in ticked[i + 1:]])
    runner = CliRunner()
    assert runner.invoke(accept, ["--collection", str(annot_collection.root)]).exit_code == 0
    rows = _csv_rows(path)
    header, body = rows[0], rows[1:]
    a, b = sorted((u[8], u[9]))
    worked = next(r for r in body if r[:2] == [a, b])
    worked[header.index("comment")] = "geprüft im Archiv, Mappe 7"
    _write_csv(path, rows)
    store.undo(d["id"], "ada")
    r = runner.invoke(accept, ["--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    assert "removed (their decision was undone after it was accepted): 2" in r.output
    assert "kept, though their decision was undone" in r.output
    assert f"{a} {b} POSITIVE" in r.output and "'comment' holds 'geprüft im Archiv, Mappe 7'" in r.output
    left = {(c.a, c.b): c for c in _rows(annot_collection) if c.source == "annotation:1"}
    assert list(left) == [(a, b)] and left[(a, b)].extra["comment"] == "geprüft im Archiv, Mappe 7"


def test_accept_writes_existing_rows_back_cell_for_cell(annot_collection):
    """Issue 11 trial: accept rewrote the curator's empty `type` cells (and ` positive `) as POSITIVE."""
    u = annot_collection.uids
    path = annot_collection.root / "connections.csv"
    _write_csv(path, [["a", "b", "type", "comment"], [u[0], u[1], "", "leer gelassen"],
                      [u[6], u[7], " positive ", ""], [u[4], u[5], "NEGATIVE", ""]])
    before = path.read_text(encoding="utf-8").splitlines()
    store = AnnotationStore(annot_collection.root)
    _decide(store, u[9:11], u[9:11], [[u[9], u[10], "POSITIVE"]])
    r = CliRunner().invoke(accept, ["--collection", str(annot_collection.root)])
    assert r.exit_code == 0 and "added: 1 POSITIVE" in r.output, r.output
    after = path.read_text(encoding="utf-8").splitlines()
    assert after[0] == before[0] + ",source,annotated_at"
    assert after[1:4] == [line + ",," for line in before[1:4]]  # as they were, plus the two new empty cells
    assert after[4].startswith(",".join(sorted(u[9:11])) + ",POSITIVE,,annotation:1,")


def test_known_pairs_are_not_written_again_and_check_stays_clean(annot_collection):
    """Issue 16: confirming a cluster wrote POSITIVE onto a pair already DUPLICATE (`data check` then warned for
    good); a "wrong cluster" NEGATIVE on a known POSITIVE pair was a contradiction reported at every accept."""
    from cluster.__main__ import cli
    from cluster.review import implied_edges
    from data.__main__ import cli as data_cli

    u = annot_collection.uids  # connections.csv: u0-u1 POSITIVE, u2-u3 DUPLICATE, u6-u7 POSITIVE
    store = AnnotationStore(annot_collection.root)
    members = u[:4]
    store.decide(cluster=2, decision="confirm", members=members, ticked=members,
                 edges=implied_edges("confirm", members, members), clusters_file="clusters.csv",
                 clusters_sha256="0" * 64, annotator="ada")
    wrong = u[6:9]
    store.decide(cluster=0, decision="wrong", members=wrong, ticked=[], edges=implied_edges("wrong", wrong, []),
                 clusters_file="clusters.csv", clusters_sha256="0" * 64, annotator="ada")
    runner = CliRunner()
    r = runner.invoke(cli, ["accept", "--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    # 6 pairs of u0..u3: u0-u1 present, u2-u3 implied by DUPLICATE, 4 written; wrong: u6-u8 and u7-u8 written
    assert "added: 2 NEGATIVE, 4 POSITIVE" in r.output
    assert "skipped (already known: the pair has a type that implies it, e.g. DUPLICATE for POSITIVE): 1" in r.output
    assert "'wrong cluster' NEGATIVE on a pair known or confirmed to share a pattern" in r.output
    assert "contradictions (not written): 0" in r.output
    rows = {(c.a, c.b): c.type for c in _rows(annot_collection)}
    assert rows[tuple(sorted((u[2], u[3])))] == "DUPLICATE"
    assert rows[tuple(sorted((u[6], u[8])))] == "NEGATIVE" and rows[tuple(sorted((u[6], u[7])))] == "POSITIVE"
    check = runner.invoke(data_cli, ["check", str(annot_collection.root), "--no-decode", "--no-progress"])
    assert check.exit_code == 0, check.output
    assert "problems: 0 errors, 0 warnings" in check.output, check.output


def test_accept_says_what_the_next_training_round_gets(annot_collection):
    """Issue 16: 414 NEGATIVE pairs from one decision turned 4 steps per epoch into 210 with no warning; accept
    now says what the accepted decisions change for training: POSITIVE pairs (they drive the steps) and the
    NEGATIVE pairs training can use (mining candidates that add no steps)."""
    import json

    from cluster.__main__ import cli
    from cluster.review import implied_edges

    u = annot_collection.uids
    # every image in train, so that the figures do not depend on the split hash
    (annot_collection.root / "splits.json").write_text(json.dumps({"version": 1, "split_of": dict.fromkeys(u, "train")}))
    store = AnnotationStore(annot_collection.root)

    def decide(cid, decision, members, ticked):
        store.decide(cluster=cid, decision=decision, members=members, ticked=ticked,
                     edges=implied_edges(decision, members, ticked), clusters_file="clusters.csv",
                     clusters_sha256="0" * 64, annotator="ada")

    decide(2, "confirm_reject", u[:6], u[:2])  # u0-u1 known; 4 rejected x 2 ticked NEGATIVE pairs
    decide(0, "confirm", u[6:9], u[6:9])  # u6-u7 known; u6-u8, u7-u8 new
    r = CliRunner().invoke(cli, ["accept", "--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    # before: 6 POSITIVE pairs (0-1, 6-7, 11-12, 12-13, 11-13, 14-15) and 1 NEGATIVE (4-5)
    assert "training POSITIVE pairs: 6 -> 8 (they drive the steps per epoch" in r.output
    assert "annotated NEGATIVE pairs training can use: 1 -> 9 (mining candidates" in r.output
    assert "they add no steps" in r.output and "--plan" in r.output
    # a second run: nothing changes, and it says so in the same terms
    r = CliRunner().invoke(cli, ["accept", "--collection", str(annot_collection.root)])
    assert "training POSITIVE pairs: 8 -> 8" in r.output and "annotated NEGATIVE pairs training can use: 9 -> 9" in r.output
    assert "held-out POSITIVE pairs" not in r.output  # every image in train: nothing held out, no line


def test_accept_says_when_new_pairs_join_a_held_out_group(annot_collection):
    """A new-user trial confirmed a cluster holding a test image: 8 new POSITIVE pairs, and accept said
    'training POSITIVE pairs: 18 -> 18' with no word of where they went (into the test group, by design)."""
    import json

    from cluster.__main__ import cli
    from cluster.review import implied_edges

    u = annot_collection.uids
    split_of = dict.fromkeys(u, "train") | dict.fromkeys(u[6:9], "test")
    (annot_collection.root / "splits.json").write_text(json.dumps({"version": 1, "split_of": split_of}))
    AnnotationStore(annot_collection.root).decide(
        cluster=0, decision="confirm", members=u[6:9], ticked=u[6:9], edges=implied_edges("confirm", u[6:9], u[6:9]),
        clusters_file="clusters.csv", clusters_sha256="0" * 64, annotator="ada")  # u6-u7 known; u6-u8, u7-u8 new
    r = CliRunner().invoke(cli, ["accept", "--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    assert "training POSITIVE pairs: 5 -> 5" in r.output
    assert "held-out POSITIVE pairs (val, test): 1 -> 3 (a link that touches a val or test group joins it" in r.output


def test_a_wrong_cluster_accepted_then_undone_takes_its_negatives_out(annot_collection):
    """Issue 16: "wrong cluster" now records NEGATIVE links; accept writes them, and an undo takes them out."""
    from cluster.__main__ import cli
    from cluster.review import implied_edges

    u = annot_collection.uids
    store = AnnotationStore(annot_collection.root)
    members = u[11:14] + u[14:16]  # u11-u13 are known POSITIVE among themselves, u14-u15 too
    rec = store.decide(cluster=1, decision="wrong", members=members, ticked=[],
                       edges=implied_edges("wrong", members, []), clusters_file="clusters.csv",
                       clusters_sha256="0" * 64, annotator="ada")
    runner = CliRunner()
    r = runner.invoke(cli, ["accept", "--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    # neighbour pairs: 11-12, 11-13, 12-13 (known POSITIVE: not overruled), 12-14, 13-14, 13-15, 14-15 (known)
    assert "added: 3 NEGATIVE" in r.output and "contradictions (not written): 0" in r.output
    negatives = {c.pair for c in _rows(annot_collection) if c.type == "NEGATIVE"}
    assert {tuple(sorted((u[12], u[14]))), tuple(sorted((u[13], u[14]))), tuple(sorted((u[13], u[15])))} <= negatives
    store.undo(rec["id"], "ada")
    r = runner.invoke(cli, ["accept", "--collection", str(annot_collection.root)])
    assert r.exit_code == 0 and "removed (their decision was undone after it was accepted): 3" in r.output
    assert {c.pair for c in _rows(annot_collection) if c.type == "NEGATIVE"} == negatives - {
        tuple(sorted((u[12], u[14]))), tuple(sorted((u[13], u[14]))), tuple(sorted((u[13], u[15])))}


def test_a_damaged_splits_file_does_not_stop_accept(annot_collection):
    """The training summary reads splits.json; a damaged one is named in a warning, the rows are still written."""
    from cluster.__main__ import cli

    u = annot_collection.uids
    (annot_collection.root / "splits.json").write_text("{not json")
    _decide(AnnotationStore(annot_collection.root), u[6:9], u[7:9], [[u[7], u[8], "POSITIVE"]])
    r = CliRunner().invoke(cli, ["accept", "--collection", str(annot_collection.root)])
    assert r.exit_code == 0, r.output
    assert "added: 1 POSITIVE" in r.output and "Traceback" not in r.output
    assert "warning: cannot count the next round's training pairs:" in r.output and "splits.json" in r.output


def test_ctrl_c_during_accept_is_one_line_and_the_file_is_whole(annot_collection, monkeypatch):
    """Found in a trial: Ctrl-C in `accept` printed click's bare "Aborted!", which does not say whether the museum's
    connections.csv was changed. It is one line saying so (exit 130, as for `model embed`), and the file is whole."""
    import cluster.accept as accept_module

    u = annot_collection.uids
    _decide(AnnotationStore(annot_collection.root), u[6:9], u[7:9], [[u[7], u[8], "POSITIVE"]])
    before = (annot_collection.root / "connections.csv").read_bytes()

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(accept_module, "atomic_write", interrupted)
    r = CliRunner().invoke(accept, ["--collection", str(annot_collection.root)])
    assert r.exit_code == 130 and "Traceback" not in r.output and "Aborted" not in r.output, r.output
    lines = r.output.strip().splitlines()
    assert lines[-1].startswith("interrupted:") and "connections.csv" in lines[-1], r.output
    assert "run the same command again" in lines[-1]
    assert (annot_collection.root / "connections.csv").read_bytes() == before
