"""Bad inputs over every stage: a clear message naming the file, line or uid, never a traceback, nothing lost.

Each row of `FAULTS` damages one file of a pristine workspace (tests/faults/workspace.py) the way real
archives do (Excel encodings, torn files, NaN, stray uids, corrupt images) and runs one command through its
click CLI, as a user would. For every row the suite checks:
- the exit status (non-zero for an input the command cannot use; zero where the tool can carry on and says
  what it did; `EITHER` where both are acceptable as long as the message is there);
- no uncaught exception (click's runner records it: that is what would print a traceback);
- the output names what the user must look at (file, line, uid);
- every input file of the user is byte-identical afterwards (collection, signatures, clusters, run);
- a command that failed left no output file behind.
New stages join the table with their own rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.faults.workspace import Workspace, digest

FAIL, OK, EITHER = "fail", "ok", "either"


@dataclass(frozen=True)
class Fault:
    stage: str  # the command, as a user types it after `python -m`
    name: str
    damage: Callable[[Workspace], None]
    argv: Callable[[Workspace], list[str]]
    names: Callable[[Workspace], list[str]]  # strings the output must contain
    exit: str = FAIL
    outputs: Callable[[Workspace], list[Path]] = field(default=lambda ws: [])  # must not exist after a failure

    @property
    def id(self) -> str:
        return f"{self.stage.replace(' ', '-')}:{self.name}"


# -- damage -------------------------------------------------------------------------------------------------

def _rewrite(path: Path, text: str, encoding: str) -> None:
    path.write_bytes(text.encode(encoding))


def images_cp1252(ws: Workspace) -> None:
    p = ws.coll / "images.csv"
    text = p.read_text(encoding="utf-8").replace("\n", "\r\n")
    lines = text.split("\r\n")
    lines[1] = lines[1].rstrip(",") + ""  # keep the row; Excel on Windows writes CRLF
    # a title with letters cp1252 has and UTF-8 would encode differently (é, the em dash, the euro sign)
    head = lines[0] + ",note"
    rows = [ln + (",Vierge à l'Enfant — 1500 €" if ln else "") for ln in lines[1:]]
    _rewrite(p, "\r\n".join([head, *rows]), "cp1252")


def images_utf16_tabs(ws: Workspace) -> None:
    """Excel's "Unicode Text": UTF-16 with a BOM, tab-separated."""
    p = ws.coll / "images.csv"
    rows = [ln.split(",") for ln in p.read_text(encoding="utf-8").splitlines()]
    _rewrite(p, "\r\n".join("\t".join(r) for r in rows) + "\r\n", "utf-16")


def connections_cp1252(ws: Workspace) -> None:
    p = ws.coll / "connections.csv"
    _rewrite(p, p.read_text(encoding="utf-8").replace("box 1", "boîte n° 1 — vérifié"), "cp1252")


def images_header_only(ws: Workspace) -> None:
    p = ws.coll / "images.csv"
    p.write_text(p.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")


def images_binary(ws: Workspace) -> None:
    (ws.coll / "images.csv").write_bytes(b"uid,path\n" + bytes(range(256)) * 4)


def images_missing(ws: Workspace) -> None:
    (ws.coll / "images.csv").unlink()


def uid_with_newline(ws: Workspace) -> None:
    p = ws.coll / "images.csv"
    lines = p.read_text(encoding="utf-8").splitlines()
    lines.append('"bad\nuid",img/train00_000.png,two lines')
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")


def connection_to_unknown_uid(ws: Workspace) -> None:
    p = ws.coll / "connections.csv"
    p.write_text(p.read_text(encoding="utf-8") + "train00_000,ghost_999,x,POSITIVE,train,M. Rossi\n",
                 encoding="utf-8")


def corrupt_image(ws: Workspace) -> None:
    p = ws.coll / "img" / "distractor_001.png"
    p.write_bytes(p.read_bytes()[:60])


def check_cache_damaged(ws: Workspace) -> None:
    (ws.coll / ".cache").mkdir(exist_ok=True)
    (ws.coll / ".cache" / "check.jsonl").write_bytes(b'{"format": "visual-sig\x00\xff torn')


def cache_folder_blocked(ws: Workspace) -> None:
    """A collection whose cache folder cannot be made (as root, a read-only mode would not stop the writes)."""
    (ws.coll / ".cache").write_text("not a folder")


def signatures_truncated(ws: Workspace) -> None:
    ws.sig.write_bytes(ws.sig.read_bytes()[:300])


def signatures_text(ws: Workspace) -> None:
    ws.sig.write_text("uid,x\nu1,0.5\n", encoding="utf-8")


def signatures_nan(ws: Workspace) -> None:
    with np.load(ws.sig) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["vectors"][5] = np.nan
    np.savez(ws.sig, **arrays)


def nan_uid(ws: Workspace) -> str:
    return ws.uids()[5]


def clusters_unknown_uid(ws: Workspace) -> None:
    """clusters.csv of another collection: one of its uids is not in this images.csv."""
    lines = ws.clusters.read_text(encoding="utf-8").splitlines()
    lines[1] = "ghost_999," + lines[1].split(",", 1)[1]
    ws.clusters.write_text("\n".join(lines) + "\n", encoding="utf-8")


def clusters_bad_row(ws: Workspace) -> None:
    lines = ws.clusters.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].replace(",", ",x", 1)  # cluster "x0" is not an integer
    ws.clusters.write_text("\n".join(lines) + "\n", encoding="utf-8")


def clusters_no_column(ws: Workspace) -> None:
    lines = ws.clusters.read_text(encoding="utf-8").splitlines()
    ws.clusters.write_text("\n".join(",".join(ln.split(",")[:1] + ln.split(",")[2:]) for ln in lines) + "\n",
                           encoding="utf-8")


def eval_json_torn(ws: Workspace) -> None:
    p = ws.run / "eval.json"
    p.write_text(p.read_text(encoding="utf-8")[:40], encoding="utf-8")


def annotations_bad_middle_line(ws: Workspace) -> None:
    text = ws.annotations.read_text(encoding="utf-8")
    ws.annotations.write_text('{"kind": "decision", "id": "x"\n' + text, encoding="utf-8")


def proposals_bad_middle_line(ws: Workspace) -> None:
    good = json.dumps({"kind": "proposal", "id": "p", "cluster": -2, "uids": [], "note": ""})
    (ws.annotations.parent / "proposals.jsonl").write_text('{"kind": "proposal", "id"\n' + good + "\n",
                                                          encoding="utf-8")


def index_not_an_index(ws: Workspace) -> None:
    (ws.root / "index").mkdir()


def index_torn_manifest(ws: Workspace) -> None:
    (ws.root / "index").mkdir()
    (ws.root / "index" / "manifest.json").write_text('{"format": "vsig-index", "ver', encoding="utf-8")


def annotation_edge_to_unknown_uid(ws: Workspace) -> None:
    rec = json.loads(ws.annotations.read_text(encoding="utf-8").splitlines()[0])
    rec.update(id="second", edges=[[rec["members"][0], "ghost_999", "POSITIVE"]])
    with open(ws.annotations, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


def weights_not_weights(ws: Workspace) -> None:
    (ws.root / "w").mkdir()
    (ws.root / "w" / "notes.txt").write_text("not weights", encoding="utf-8")


def weights_bad_meta(ws: Workspace) -> None:
    (ws.root / "w" / "state").mkdir(parents=True)
    (ws.root / "w" / "meta.json").write_text('{"format": "visual-signatures-weights", "arch"', encoding="utf-8")


def signatures_of_another_collection(ws: Workspace) -> None:
    from data.signatures import Signatures, load_signatures, save_signatures

    sig = load_signatures(ws.sig)
    save_signatures(ws.sig, Signatures([f"other_{u}" for u in sig.uids], sig.vectors, meta=sig.meta))


def quality_of_another_clustering(ws: Workspace) -> None:
    """quality.json written by `cluster evaluate` for a clusters.csv that is not the one given to report."""
    other = ws.root / "other.csv"
    lines = ws.clusters.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [ln.split(",") for ln in lines[1:]]
    for r in rows:
        r[1] = "-1"  # every image noise: another clustering of the same images
    other.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    from cluster.__main__ import cli

    r = CliRunner().invoke(cli, ["evaluate", str(other), "--collection", str(ws.coll), "--json",
                                 str(ws.root / "quality.json")])
    assert r.exit_code == 0, r.output
    other.unlink()


def weights_array_damaged(ws: Workspace) -> None:
    """A weights folder whose meta.json is fine but one of whose array files is cut short."""
    from model.registry import build
    from model.weights import save_weights

    save_weights(build("resnet18", seed=0), ws.root / "w")
    biggest = max((f for f in (ws.root / "w" / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:1000])


def nothing(ws: Workspace) -> None:
    pass


def parts_of_other_settings(ws: Workspace) -> None:
    """What a killed `model embed --arch resnet50 ... --out out.npz` leaves beside the output."""
    parts = ws.root / "out.npz.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"format": "visual-signatures-parts", "rows": 28,
                                                     "chunk_rows": 4096, "dim": 2048,
                                                     "fingerprint": {"arch": "resnet50"}}))


def parts_manifest_damaged(ws: Workspace) -> None:
    parts = ws.root / "out.npz.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text('{"format": "visual-sig')


# -- commands -----------------------------------------------------------------------------------------------

def check(ws):
    return ["data", "check", str(ws.coll)]


def thumbs(ws):
    return ["data", "thumbs", str(ws.coll), "--workers", "1", "--no-progress"]


def embed(ws, weights="random"):
    arch = ["--arch", "resnet18"] if weights == "random" else []
    return ["model", "embed", "--weights", weights, *arch, "--collection", str(ws.coll), "--resolution", "32",
            "--batch-size", "8", "--out", str(ws.root / "out.npz"), "--no-progress"]


def train(ws, *extra):
    return ["train", "--collection", str(ws.coll), "--arch", "resnet18", "--weights", "random", "--out",
            str(ws.root / "newrun"), "--no-progress", "--set", "resolution=32", *extra]


def optics(ws):
    return ["cluster", "optics", str(ws.sig), "--out", str(ws.root / "out.csv")]


def evaluate(ws):
    return ["cluster", "evaluate", str(ws.clusters), "--collection", str(ws.coll), "--json",
            str(ws.root / "quality.json")]


def cmap(ws):
    return ["cluster", "map", str(ws.sig), "--collection", str(ws.coll), "--clusters", str(ws.clusters), "--out",
            str(ws.root / "newmap"), "--n-neighbors", "4", "--thumb-size", "16"]


def report(ws):
    return ["cluster", "report", "--collection", str(ws.coll), "--clusters", str(ws.clusters), "--run", str(ws.run),
            "--out", str(ws.root / "report.html")]


def annotate(ws):
    return ["cluster", "annotate", "--collection", str(ws.coll), "--clusters", str(ws.clusters), "--port", "0"]


def accept(ws):
    return ["cluster", "accept", "--collection", str(ws.coll)]


def export(ws):
    return ["cluster", "export", str(ws.coll), "--clusters", str(ws.clusters), "--out", str(ws.root / "export")]


def csv_name(name):
    return lambda ws: [name]


FAULTS = [
    # data check
    Fault("data check", "no images.csv", images_missing, check, csv_name("images.csv")),
    Fault("data check", "header only", images_header_only, check, csv_name("images.csv")),
    Fault("data check", "binary images.csv", images_binary, check, csv_name("images.csv")),
    Fault("data check", "excel cp1252 images.csv", images_cp1252, check, csv_name("images.csv"), exit=EITHER),
    Fault("data check", "excel utf-16 tab images.csv", images_utf16_tabs, check, csv_name("images"), exit=OK),
    Fault("data check", "excel cp1252 connections.csv", connections_cp1252, check, csv_name("connections.csv"),
          exit=EITHER),
    Fault("data check", "uid with a newline", uid_with_newline, check, csv_name("images.csv")),
    Fault("data check", "unknown uid in connections", connection_to_unknown_uid, check,
          lambda ws: ["connections.csv", "ghost_999"]),
    Fault("data check", "corrupt image", corrupt_image, check, lambda ws: ["distractor_001"]),
    Fault("data check", "damaged check cache", check_cache_damaged, check, lambda ws: ["check.jsonl", "rebuilt"],
          exit=OK),
    Fault("data check", "cache folder cannot be made", cache_folder_blocked, check,
          lambda ws: ["cannot write the check cache"], exit=OK),
    Fault("data thumbs", "corrupt image", corrupt_image, thumbs, lambda ws: ["distractor_001", "distractor_001.png"]),
    Fault("data thumbs", "cache folder cannot be made", cache_folder_blocked, thumbs,
          lambda ws: ["thumbs-256", "--thumb-cache"]),
    # model embed
    Fault("model embed", "corrupt image", corrupt_image, embed, lambda ws: ["distractor_001"], exit=OK),
    Fault("model embed", "no images.csv", images_missing, embed, csv_name("images.csv"),
          outputs=lambda ws: [ws.root / "out.npz"]),
    Fault("model embed", "not a weights folder", weights_not_weights, lambda ws: embed(ws, str(ws.root / "w")),
          lambda ws: [str(ws.root / "w")], outputs=lambda ws: [ws.root / "out.npz"]),
    Fault("model embed", "damaged meta.json", weights_bad_meta, lambda ws: embed(ws, str(ws.root / "w")),
          csv_name("meta.json"), outputs=lambda ws: [ws.root / "out.npz"]),
    Fault("model embed", "damaged weights array", weights_array_damaged, lambda ws: embed(ws, str(ws.root / "w")),
          lambda ws: [str(ws.root / "w")], outputs=lambda ws: [ws.root / "out.npz"]),
    Fault("model embed", "excel cp1252 images.csv", images_cp1252, embed, csv_name("images.csv"), exit=EITHER),
    Fault("model embed", "unfinished store of other settings", parts_of_other_settings, embed,
          lambda ws: ["out.npz.parts", "arch: 'resnet50' then, 'resnet18' now", "delete the folder"],
          outputs=lambda ws: [ws.root / "out.npz"]),
    Fault("model embed", "damaged manifest of an unfinished store", parts_manifest_damaged, embed,
          lambda ws: ["manifest.json", "delete the folder"], outputs=lambda ws: [ws.root / "out.npz"]),
    # train
    Fault("train", "collection that check rejects", connection_to_unknown_uid, train,
          lambda ws: ["connections.csv", "ghost_999"], outputs=lambda ws: [ws.root / "newrun" / "checkpoints"]),
    Fault("train", "resume of nothing", nothing, lambda ws: train(ws, "--resume"), lambda ws: ["newrun"]),
    Fault("train", "resume-from a run without weights", nothing,
          lambda ws: ["train", "--collection", str(ws.coll), "--resume-from", str(ws.run), "--out",
                      str(ws.root / "newrun"), "--no-progress"], lambda ws: ["run"],
          outputs=lambda ws: [ws.root / "newrun" / "checkpoints"]),
    # cluster optics
    Fault("cluster optics", "truncated signatures", signatures_truncated, optics, csv_name("sig.npz"),
          outputs=lambda ws: [ws.root / "out.csv"]),
    Fault("cluster optics", "text file as signatures", signatures_text, optics, csv_name("sig.npz"),
          outputs=lambda ws: [ws.root / "out.csv"]),
    Fault("cluster optics", "NaN signature", signatures_nan, optics, lambda ws: ["sig.npz", nan_uid(ws)],
          outputs=lambda ws: [ws.root / "out.csv"]),
    # cluster evaluate
    Fault("cluster evaluate", "uid not in the collection", clusters_unknown_uid, evaluate,
          lambda ws: ["ghost_999"], exit=EITHER),
    Fault("cluster evaluate", "damaged row", clusters_bad_row, evaluate, lambda ws: ["clusters.csv", ":4"],
          outputs=lambda ws: [ws.root / "quality.json"]),
    Fault("cluster evaluate", "excel cp1252 connections.csv", connections_cp1252, evaluate,
          csv_name("connections.csv"), exit=EITHER),
    # cluster map
    Fault("cluster map", "NaN signature", signatures_nan, cmap, lambda ws: ["sig.npz", nan_uid(ws)],
          outputs=lambda ws: [ws.root / "newmap" / "map.html"]),
    Fault("cluster map", "clusters of other images", clusters_unknown_uid, cmap, csv_name("clusters.csv"),
          outputs=lambda ws: [ws.root / "newmap" / "map.html"]),
    Fault("cluster map", "signatures of another collection", signatures_of_another_collection, cmap,
          lambda ws: ["other_"], outputs=lambda ws: [ws.root / "newmap"]),
    # cluster report
    Fault("cluster report", "torn eval.json", eval_json_torn, report, csv_name("eval.json"),
          outputs=lambda ws: [ws.root / "report.html"]),
    Fault("cluster report", "clusters.csv without a column", clusters_no_column, report, csv_name("clusters.csv"),
          outputs=lambda ws: [ws.root / "report.html"]),
    Fault("cluster report", "quality of another clustering", quality_of_another_clustering,
          lambda ws: [*report(ws), "--quality", str(ws.root / "quality.json")], csv_name("quality.json"),
          outputs=lambda ws: [ws.root / "report.html"]),
    Fault("cluster report", "clusters of other images", clusters_unknown_uid, report, lambda ws: ["ghost_999"],
          outputs=lambda ws: [ws.root / "report.html"]),
    # cluster annotate (the server never starts on these)
    Fault("cluster annotate", "damaged middle line of the log", annotations_bad_middle_line, annotate,
          lambda ws: ["annotations.jsonl", ":1"]),
    Fault("cluster annotate", "damaged middle line of the map's proposals", proposals_bad_middle_line, annotate,
          lambda ws: ["proposals.jsonl", ":1"]),
    Fault("cluster annotate", "clusters of other images", clusters_unknown_uid, annotate, lambda ws: ["ghost_999"]),
    Fault("cluster annotate", "binary images.csv", images_binary, annotate, csv_name("images.csv")),
    Fault("cluster annotate", "--index a folder that is no index", index_not_an_index,
          lambda ws: [*annotate(ws), "--index", str(ws.root / "index")], lambda ws: ["index", "model index"]),
    Fault("cluster annotate", "--index with a torn manifest", index_torn_manifest,
          lambda ws: [*annotate(ws), "--index", str(ws.root / "index")], csv_name("manifest.json")),
    # cluster accept
    Fault("cluster accept", "damaged middle line of the log", annotations_bad_middle_line, accept,
          lambda ws: ["annotations.jsonl", ":1"]),
    Fault("cluster accept", "edge to an unknown uid", annotation_edge_to_unknown_uid, accept,
          lambda ws: ["ghost_999"], exit=OK),
    Fault("cluster accept", "excel cp1252 connections.csv", connections_cp1252, accept,
          csv_name("connections.csv"), exit=EITHER),
    # cluster export
    Fault("cluster export", "damaged middle line of the log", annotations_bad_middle_line, export,
          lambda ws: ["annotations.jsonl", ":1"], outputs=lambda ws: [ws.root / "export"]),
    Fault("cluster export", "damaged middle line of the map's proposals", proposals_bad_middle_line, export,
          lambda ws: ["proposals.jsonl", ":1"], outputs=lambda ws: [ws.root / "export"]),
    Fault("cluster export", "clusters of other images", clusters_unknown_uid, export, lambda ws: ["ghost_999"],
          outputs=lambda ws: [ws.root / "export"]),
    Fault("cluster export", "excel cp1252 images.csv", images_cp1252, export, csv_name("images.csv"), exit=EITHER),
]

# What each stage may legitimately change in the workspace (its outputs); everything else is the user's.
WRITES = {
    "data check": {"check.jsonl"},
    "cluster accept": {"connections.csv", "connections.csv.bak"},
    "train": {"splits.json"},
}


def _cli(stage: str):
    pkg = stage.split()[0]
    if pkg == "data":
        from data.__main__ import cli
    elif pkg == "model":
        from model.__main__ import cli
    elif pkg == "train":
        from train.__main__ import cli
    else:
        from cluster.__main__ import cli
    return cli


def _inputs(ws: Workspace) -> list[Path]:
    return [ws.coll, ws.sig, ws.clusters, ws.run, ws.map]


def _changed(before: dict[str, str], after: dict[str, str], allowed: set[str]) -> list[str]:
    """Files whose bytes changed or vanished; `allowed` names files (by name) a stage may rewrite."""
    out = []
    for path, h in before.items():
        name = Path(path).name
        if after.get(path) != h and name not in allowed:
            out.append(path)
    return out


@pytest.fixture
def no_server(monkeypatch):
    """`cluster annotate` must fail before serving; if it got as far as listening, the test fails instead."""
    import cluster.annotate.cli as annotate_cli

    def refuse(*a, **k):
        raise AssertionError("the annotation server started on an input it should have refused")

    monkeypatch.setattr(annotate_cli, "make_server", refuse)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_bad_input(fault: Fault, ws: Workspace, no_server) -> None:
    fault.damage(ws)
    before = digest(_inputs(ws))
    argv = fault.argv(ws)
    result = CliRunner().invoke(_cli(fault.stage), argv[1:])
    out = result.output
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, f"{fault.id}: uncaught {type(result.exception).__name__}: {result.exception}\n{out}"
    if fault.exit == FAIL:
        assert result.exit_code != 0, f"{fault.id}: exit 0 on an input it cannot use\n{out}"
    elif fault.exit == OK:
        assert result.exit_code == 0, f"{fault.id}: should carry on (exit {result.exit_code})\n{out}"
    for s in fault.names(ws):
        assert s in out, f"{fault.id}: the message does not name {s!r}\n{out}"
    if result.exit_code != 0:
        for p in fault.outputs(ws):
            assert not p.exists(), f"{fault.id}: failed but left {p}"
        assert "Traceback" not in out
    allowed = WRITES.get(fault.stage, set()) if result.exit_code == 0 else set()
    assert not _changed(before, digest(_inputs(ws)), allowed), f"{fault.id}: the user's files changed"
