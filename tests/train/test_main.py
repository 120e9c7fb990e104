import json

import numpy as np
from click.testing import CliRunner

from data.collection import Connection, ImageRecord, write_connections, write_images
from data.signatures import Signatures, save_signatures
from train.__main__ import cli


def test_help_for_every_command():
    r = CliRunner()
    for args in (["--help"], ["run", "--help"], ["evaluate", "--help"]):
        res = r.invoke(cli, args)
        assert res.exit_code == 0, res.output
    assert "--resume-from" in r.invoke(cli, ["run", "--help"]).output


def test_evaluate_command(tmp_path):
    uids = [f"u{i}" for i in range(6)]
    write_images(tmp_path / "images.csv", [ImageRecord(u, f"{u}.jpg", None, {}, 0) for u in uids])
    write_connections(tmp_path / "connections.csv",
                      [Connection("u0", "u1", "POSITIVE", split="test"), Connection("u2", "u3", "POSITIVE", split="train")])
    # u0 and u1 are each other's nearest: perfect retrieval for both test queries
    vec = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1], [0.1, 0, 1]], np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    save_signatures(tmp_path / "sig.npz", Signatures(uids, vec))
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "sig.npz"), "--collection", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["split"] == "test" and out["num_queries"] == 2 and out["mAP"] == 1.0 and out["recall@1"] == 1.0


def test_bad_override_is_a_clear_error(tmp_path):
    (tmp_path / "images.csv").write_text("uid,path\n")
    res = CliRunner().invoke(cli, ["--collection", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "nope=1"])
    assert res.exit_code != 0 and "unknown config field" in res.output
