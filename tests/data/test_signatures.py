"""The signature store: float32 and float16, memory-mapped, block-wise checks; older files still read;
the chunked, resumable folder `OUT.parts/` and its chunk plan for several processes."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import data.signatures as S
from data.signatures import (
    Chunk,
    ChunkPlan,
    PartsMismatchError,
    Signatures,
    StoreParts,
    load_signatures,
    save_signatures,
)


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sig_of(n: int = 50, d: int = 24) -> Signatures:
    return Signatures([f"u{i}" for i in range(n)], unit_rows(n, d), skipped=["gone"], meta={"arch": "x"})


def vectors_offset(path) -> int:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("vectors.npy")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(fh.read(4), "<u2")
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        S._npy_header(fh)
        return fh.tell()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_store_round_trip_is_memory_mapped_aligned_and_plain_numpy(tmp_path, dtype):
    sig = sig_of()
    path = tmp_path / "s.npz"
    save_signatures(path, sig, dtype=dtype)
    got = load_signatures(path)
    assert isinstance(got.vectors, np.memmap) and got.vectors.dtype == np.dtype(dtype) and got.dtype == dtype
    assert vectors_offset(path) % S.ALIGN == 0
    assert got.uids == sig.uids and got.skipped == ["gone"] and got.meta == {"arch": "x"}
    tol = 0 if dtype == "float32" else 1e-3
    np.testing.assert_allclose(got.dense(), sig.vectors, atol=tol)
    assert got.dense().dtype == np.float32 and got.rows(3, 7).dtype == np.float32
    np.testing.assert_array_equal(got.rows(3, 7), got.dense()[3:7])
    blocks = list(got.blocks(rows=7))
    assert [s for s, _ in blocks] == list(range(0, 50, 7))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), got.dense())
    with np.load(path) as z:  # NumPy alone reads it
        assert z["vectors"].dtype == np.dtype(dtype) and z["vectors"].shape == (50, 24)


def test_float16_store_is_half_the_size(tmp_path):
    sig = sig_of(200, 64)
    save_signatures(tmp_path / "a.npz", sig)
    save_signatures(tmp_path / "b.npz", sig, dtype="float16")
    a, b = (tmp_path / "a.npz").stat().st_size, (tmp_path / "b.npz").stat().st_size
    assert b < 0.55 * a


def test_the_same_signatures_give_the_same_bytes(tmp_path):
    save_signatures(tmp_path / "a.npz", sig_of())
    save_signatures(tmp_path / "b.npz", sig_of())
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_files_of_earlier_versions_and_other_tools_still_read(tmp_path, writer, dtype):
    """Every signatures.npz written so far (np.savez, float32) and a compressed or float64 copy read as before."""
    x = unit_rows(30, 16)
    path = tmp_path / "old.npz"
    writer(path, uids=np.asarray([f"u{i}" for i in range(30)]), vectors=x.astype(dtype),
           skipped=np.asarray(["b"]), meta=np.asarray(json.dumps({"arch": "resnet18"})))
    got = load_signatures(path)
    assert got.uids[:2] == ["u0", "u1"] and got.skipped == ["b"] and got.meta["arch"] == "resnet18"
    assert got.vectors.dtype == np.float32
    np.testing.assert_allclose(got.dense(), x, atol=1e-7)


def test_checks_stream_through_blocks_and_count_the_whole_file(tmp_path, monkeypatch):
    x = unit_rows(40, 8)
    x[[5, 33]] = np.nan
    np.savez(tmp_path / "nan.npz", uids=np.asarray([f"u{i}" for i in range(40)]), vectors=x)
    monkeypatch.setattr(S, "BLOCK_BYTES", 4 * 8 * 6)  # 6 rows per block: the two bad rows in two blocks
    with pytest.raises(ValueError, match=r"2 of 40 signature rows are not finite .*uid 'u5'"):
        load_signatures(tmp_path / "nan.npz")
    y = unit_rows(40, 8)
    y[[7, 30]] *= 2
    save_signatures(tmp_path / "norm.npz", Signatures([f"u{i}" for i in range(40)], y))
    with pytest.raises(ValueError, match=r"2 of 40 rows are not unit-norm \(first: uid 'u7'"):
        load_signatures(tmp_path / "norm.npz")
    assert len(load_signatures(tmp_path / "norm.npz", check_norm=False)) == 40


def test_a_truncated_store_is_a_clear_error(tmp_path):
    path = tmp_path / "s.npz"
    save_signatures(path, sig_of(100, 32), dtype="float16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a signatures file, or a damaged one"):
        load_signatures(path)


def test_empty_store(tmp_path):
    save_signatures(tmp_path / "e.npz", Signatures([], np.zeros((0, 8), np.float32), skipped=["a"]), dtype="float16")
    got = load_signatures(tmp_path / "e.npz")
    assert len(got) == 0 and got.dim == 8 and got.dense().shape == (0, 8) and got.skipped == ["a"]


# --- chunks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2, 3, 7])
def test_chunk_plan_gives_each_chunk_to_exactly_one_process(processes):
    plan = ChunkPlan(rows=23, chunk_rows=4)
    assert plan.count == 6 and plan.span(5) == (20, 23)
    mine = [plan.mine(p, processes) for p in range(processes)]
    flat = sorted(k for m in mine for k in m)
    assert flat == list(range(6))
    for p, ks in enumerate(mine):
        assert all(k % processes == p for k in ks)
    covered = sorted(r for k in flat for r in range(*plan.span(k)))
    assert covered == list(range(23))


def _chunk(k: int, plan: ChunkPlan, d: int = 8) -> Chunk:
    a, b = plan.span(k)
    uids = [f"u{i}" for i in range(a, b) if i != 5]
    return Chunk(uids, unit_rows(len(uids), d, seed=k), ["u5"] if a <= 5 < b else [],
                 [(uids[0], f"img/{uids[0]}.png", ["rotated"])], [("img/u5.png", "not an image")] if a <= 5 < b else [])


def test_parts_write_merge_and_remove(tmp_path):
    plan = ChunkPlan(10, 4)
    parts = StoreParts.beside(tmp_path / "s.npz")
    assert parts.folder.name == "s.npz.parts"
    assert parts.start({"arch": "a"}, plan, 8) == plan
    for k in reversed(range(plan.count)):  # any order: each chunk is its own file
        parts.write(k, _chunk(k, plan), "float16")
    assert parts.done() == {0, 1, 2}
    heads = parts.merge(tmp_path / "s.npz", plan.count, {"arch": "a"}, "float16", 8)
    parts.remove()
    assert not parts.folder.exists()
    got = load_signatures(tmp_path / "s.npz")
    assert got.dtype == "float16" and got.uids == [f"u{i}" for i in range(10) if i != 5] and got.skipped == ["u5"]
    want = np.concatenate([_chunk(k, plan).vectors for k in range(3)])
    np.testing.assert_allclose(got.dense(), want, atol=1e-3)
    assert heads[1].reasons == [("img/u5.png", "not an image")] and heads[0].notes[0][2] == ["rotated"]


def test_parts_made_with_other_settings_are_refused_and_a_resume_keeps_the_first_layout(tmp_path):
    parts = StoreParts.beside(tmp_path / "s.npz")
    parts.start({"arch": "a", "resolution": 32}, ChunkPlan(10, 4), 8)
    parts.write(0, _chunk(0, ChunkPlan(10, 4)), "float32")
    assert parts.start({"arch": "a", "resolution": 32}, ChunkPlan(10, 6), 8) == ChunkPlan(10, 4)
    with pytest.raises(PartsMismatchError, match=r"resolution: 32 then, 64 now.*delete the folder"):
        parts.start({"arch": "a", "resolution": 64}, ChunkPlan(10, 4), 8)
    assert parts.done() == {0}


def test_a_folder_without_manifest_is_cleared(tmp_path):
    """What a kill inside `remove` leaves (the manifest is deleted last, so this is only leftovers)."""
    parts = StoreParts.beside(tmp_path / "s.npz")
    parts.folder.mkdir()
    (parts.folder / "chunk-000000.npz").write_bytes(b"old")
    parts.start({"arch": "a"}, ChunkPlan(4, 2), 8)
    assert parts.done() == set()


def test_a_damaged_chunk_names_itself(tmp_path):
    parts = StoreParts.beside(tmp_path / "s.npz")
    parts.start({}, ChunkPlan(4, 2), 8)
    parts.chunk(0).write_bytes(b"PK not a zip")
    with pytest.raises(ValueError, match=r"chunk-000000.npz: damaged .*delete this file"):
        parts.read(0)
