"""benchmarks/expert_loop.py: the simulated expert decides as documented, the hidden ground truth is hidden, and a
toy run prints the round lines the issue asks for (its speed and figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.collection import CONNECTIONS_FILE, Connection, read_connections, write_connections

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

TRUTH = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B"}


def test_a_pure_cluster_is_confirmed_a_mixed_one_confirmed_and_rejected_a_scattered_one_wrong():
    import expert_loop as el

    assert el.decide(["a1", "a2", "a3"], TRUTH, 0.0, 0) == ("confirm", ["a1", "a2", "a3"])
    assert el.decide(["a1", "x", "a2", "b1"], TRUTH, 0.0, 0) == ("confirm_reject", ["a1", "a2"])
    assert el.decide(["a1", "b1", "x"], TRUTH, 0.0, 0) == ("wrong", [])
    assert el.decide(["x", "y"], TRUTH, 0.0, 0) == ("wrong", [])


def test_noise_flips_verdicts_and_one_cluster_always_gets_the_same_one():
    import expert_loop as el

    clusters = [[f"a{i}", f"b{i}"] for i in range(200)]
    truth = {u: c[0] for c in clusters for u in c}  # every cluster is a true pair
    verdicts = [el.decide(c, truth, 0.3, 7)[0] for c in clusters]
    flipped = verdicts.count("wrong") / len(verdicts)
    assert 0.2 < flipped < 0.4
    assert verdicts == [el.decide(c, truth, 0.3, 7)[0] for c in clusters]
    assert el.decide(["a1", "b1", "x"], TRUTH, 1.0, 0) == ("confirm", ["a1", "b1", "x"])


def test_hidden_groups_leave_held_out_groups_and_negatives_known(tmp_path):
    import expert_loop as el

    full = tmp_path / "full"
    (full / "images").mkdir(parents=True)
    uids = [f"g{g}-{i}" for g in range(40) for i in range(3)]
    (full / "images.csv").write_text("uid,path\n" + "".join(f"{u},images/{u}.jpg\n" for u in uids))
    rows = []
    for g in range(40):
        split = "test" if g < 5 else "val" if g < 10 else "train"
        rows += [Connection(f"g{g}-0", f"g{g}-{i}", "POSITIVE", split) for i in (1, 2)]
    rows.append(Connection("g20-0", "g30-0", "NEGATIVE"))
    write_connections(full / CONNECTIONS_FILE, rows)
    truth = el.truth_groups(full)
    coll, info, held = el.hide_train_groups(full, tmp_path / "work", truth, 0.3, 0)
    kept = read_connections(coll / CONNECTIONS_FILE)
    kept_groups = {truth[c.a] for c in kept if c.type == "POSITIVE"}
    assert {truth[f"g{g}-0"] for g in range(10)} <= kept_groups  # every held-out group stays known
    assert held == {f"g{g}-{i}" for g in range(10) for i in range(3)}
    assert any(c.type == "NEGATIVE" for c in kept)
    assert info["hidden_groups"] == 40 - len(kept_groups) and 10 <= info["hidden_groups"] <= 28
    assert info["hidden_pairs"] == 3 * info["hidden_groups"]
    el.pin_found_to_train(coll, held)  # nothing accepted yet: the file is left as it is
    assert read_connections(coll / CONNECTIONS_FILE) == kept
    found = [Connection("g35-0", "g35-1", "POSITIVE", None, "annotation:1"),
             Connection("g0-0", "g35-2", "POSITIVE", None, "annotation:1")]
    write_connections(coll / CONNECTIONS_FILE, kept + found)
    el.pin_found_to_train(coll, held)
    after = read_connections(coll / CONNECTIONS_FILE)
    assert [c.split for c in after[-2:]] == ["train", None]  # one end held out: left to data.splits
    assert [c.split for c in after[:-2]] == [c.split for c in kept]


@pytest.mark.slow
def test_a_toy_loop_prints_one_line_per_round_with_the_issue_keys(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "expert_loop.py"), "--rounds", "2", "--work", str(tmp_path / "w"),
         "--demo-arg=--sources=24", "--demo-arg=--max-side=96", "--set", "epochs=1", "--set", "batch_size=4",
         "--budget", "6"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]
    lines = [json.loads(s) for s in out.stdout.splitlines() if s.startswith("{")]
    rounds = [x for x in lines if "round" in x]
    assert [x["round"] for x in rounds] == [1, 2]
    for x in rounds:
        for key in ("confirmation_rate", "new_pairs", "test_mAP", "wall_s"):
            assert key in x
        assert 0 < x["judged"] <= 6 and 0.0 <= x["confirmation_rate"] <= 1.0
        assert 0.0 <= x["test_mAP"] <= 1.0
    assert rounds[0]["new_pairs"] > 0  # the demo's copies are easy: something is found in round 1
    assert rounds[1]["positive_pairs"] >= rounds[0]["positive_pairs"]
    assert "round 2: confirmed" in out.stdout
