from __future__ import annotations

import random

from click.testing import CliRunner

from data.__main__ import cli
from data.collection import Collection, Connection, ImageRecord, load_collection
from data.splits import SplitFractions, assign_splits, load_splits, save_splits


def _coll(uids, conns):
    images = [ImageRecord(uid=u, path=f"{u}.png", url=None, meta={}, line=i + 2) for i, u in enumerate(uids)]
    connections = [Connection(a=a, b=b, type=t, split=s, line=i + 2) for i, (a, b, t, s) in enumerate(conns)]
    return Collection(root=__import__("pathlib").Path("."), images=images, connections=connections)


def _chains(n_groups, size=3):
    uids, conns = [], []
    for g in range(n_groups):
        members = [f"g{g:03d}m{k}" for k in range(size)]
        uids += members
        conns += [(members[k], members[k + 1], "POSITIVE", None) for k in range(size - 1)]
    return uids + [f"lonely{i}" for i in range(10)], conns


def test_groups_stay_whole_and_fractions_are_roughly_right():
    uids, conns = _chains(300)
    sp = assign_splits(_coll(uids, conns))
    for members in sp.groups.values():
        assert len({sp.split_of[m] for m in members}) == 1
    assert not any(u.startswith("lonely") for u in sp.split_of)
    counts = sp.counts()
    n = {s: c["groups"] for s, c in counts.items()}
    assert sum(n.values()) == 300
    assert 160 <= n["train"] <= 240 and 25 <= n["val"] <= 75 and 25 <= n["test"] <= 75
    for s in ("train", "val", "test"):
        assert all(sp.split_of[c.a] == s == sp.split_of[c.b] for c in sp.connections(s))
    assert sum(len(sp.connections(s)) for s in ("train", "val", "test")) == len(conns)


def test_deterministic_and_independent_of_row_order():
    uids, conns = _chains(50)
    a = assign_splits(_coll(uids, conns)).split_of
    rnd = random.Random(1)
    shuffled = [(b, a_, t, s) if rnd.random() < 0.5 else (a_, b, t, s) for a_, b, t, s in conns]
    rnd.shuffle(shuffled)
    uids2 = list(uids)
    rnd.shuffle(uids2)
    assert assign_splits(_coll(uids2, shuffled)).split_of == a


def test_duplicates_are_one_object():
    # x is a DUPLICATE of b; x must share b's split even though it has no POSITIVE edge.
    sp = assign_splits(_coll(["a", "b", "x"], [("a", "b", "POSITIVE", None), ("x", "b", "DUPLICATE", None)]))
    assert sp.split_of["x"] == sp.split_of["a"] == sp.split_of["b"]
    assert len(sp.groups) == 1


def test_explicit_split_column_wins():
    sp = assign_splits(_coll(["a", "b", "c", "d"], [("a", "b", "POSITIVE", "test"), ("c", "d", "POSITIVE", "val")]))
    assert sp.split_of == {"a": "test", "b": "test", "c": "val", "d": "val"}


def _find_groups_in(sp, split, n):
    return [name for name, m in sorted(sp.groups.items()) if sp.split_of[m[0]] == split][:n]


def test_merge_never_moves_test_into_train(tmp_path):
    uids, conns = _chains(60)
    first = assign_splits(_coll(uids, conns))
    (t_group,) = _find_groups_in(first, "test", 1)
    (v_group,) = _find_groups_in(first, "val", 1)
    r_groups = _find_groups_in(first, "train", 2)
    save_splits(tmp_path / "splits.json", first)
    previous = load_splits(tmp_path / "splits.json")
    assert previous == first.split_of

    # New annotations: a train group joins the test group; another train group joins the val group;
    # a brand-new image joins the test group.
    joins = [
        (first.groups[r_groups[0]][0], first.groups[t_group][1], "POSITIVE", None),
        (first.groups[v_group][2], first.groups[r_groups[1]][0], "POSITIVE", None),
        ("newcomer", first.groups[t_group][0], "POSITIVE", None),
    ]
    second = assign_splits(_coll(uids + ["newcomer"], conns + joins), previous)
    for u, s in previous.items():
        assert second.split_of[u] == s, u  # nobody moves
    assert second.split_of["newcomer"] == "test"
    excluded = {(c.a, c.b) for c, _ in second.excluded}
    assert excluded == {(j[0], j[1]) for j in joins[:2]}
    assert all("merged groups" in reason for _, reason in second.excluded)
    train_uids = {u for c in second.connections("train") for u in (c.a, c.b)}
    held_out = {u for u, s in second.split_of.items() if s != "train"}
    assert not train_uids & held_out

    # Without `previous` the merged component would follow the hash rule; with it nothing leaks.
    # Without previous, the merge still never splits a component:
    fresh = assign_splits(_coll(uids + ["newcomer"], conns + joins))
    assert fresh.excluded == []


def test_bucket_fractions_respected():
    f = SplitFractions(train=0.5, val=0.25)
    assert f.bucket(0) == "train" and f.bucket(int(0.6 * 2**64)) == "val" and f.bucket(2**64 - 1) == "test"


def test_splits_cli_persists_and_reuses(collection_factory):
    root = collection_factory(["a", "b", "c", "d"], [("a", "b"), ("c", "d")])
    res = CliRunner().invoke(cli, ["splits", str(root)])
    assert res.exit_code == 0, res.output
    saved = load_splits(root / "splits.json")
    assert set(saved) == {"a", "b", "c", "d"}
    # Pretend the earlier run put a/b in test and c/d in train, then connect them.
    saved = {"a": "test", "b": "test", "c": "train", "d": "train"}
    (root / "splits.json").write_text(__import__("json").dumps({"version": 1, "split_of": saved}))
    with open(root / "connections.csv", "a") as fh:
        fh.write("b,c,POSITIVE,\n")
    res = CliRunner().invoke(cli, ["splits", str(root)])
    assert res.exit_code == 0, res.output
    assert "excluded connections.csv:4: (b, c)" in res.output
    assert load_splits(root / "splits.json") == saved
    coll = load_collection(root)
    assert len(assign_splits(coll, saved).connections("train")) == 1


def test_duplicate_only_components_have_no_split():
    sp = assign_splits(_coll(["a", "b", "x", "y"], [("a", "b", "POSITIVE", None), ("x", "y", "DUPLICATE", None)]))
    assert set(sp.split_of) == {"a", "b"} and sp.excluded == []


def test_usable_negatives_one_rule_for_mining_and_accept():
    """A NEGATIVE is usable when both ends are known, readable, in the negative pool (train or no split) and
    not in one pattern group (DUPLICATE joins groups too); each pair counts once, in either direction."""
    from data.splits import usable_negatives

    uids = ["a1", "a2", "a3", "b1", "b2", "v1", "v2", "x", "y", "z", "bad"]
    conns = [("a1", "a2", "POSITIVE", "train"), ("a2", "a3", "DUPLICATE", None), ("b1", "b2", "POSITIVE", "train"),
             ("v1", "v2", "POSITIVE", "val"),
             ("a1", "b1", "NEGATIVE", None), ("b1", "a1", "NEGATIVE", None),  # one pair, twice
             ("a1", "a3", "NEGATIVE", None),  # contradicted through the DUPLICATE edge
             ("a2", "a1", "NEGATIVE", None),  # contradicted by the POSITIVE edge
             ("x", "v1", "NEGATIVE", None),  # a held-out end
             ("x", "y", "NEGATIVE", None),  # two unconnected images: usable
             ("y", "bad", "NEGATIVE", None),  # an unreadable end
             ("z", "ghost", "NEGATIVE", None),  # an end images.csv does not know
             ("z", "z", "NEGATIVE", None)]  # fmt: skip
    coll = _coll(uids, conns)
    split_of = assign_splits(coll).split_of
    assert (split_of["a1"], split_of["b1"], split_of["v1"]) == ("train", "train", "val")
    assert usable_negatives(coll, split_of, skipped={"bad"}) == {("a1", "b1"), ("x", "y")}
    assert usable_negatives(coll, split_of) == {("a1", "b1"), ("x", "y"), ("bad", "y")}
    # accept passes the groups its split assignment already has: they are pattern_groups' own
    from data.graph import pattern_groups

    split = assign_splits(coll)
    assert split.group_of() == pattern_groups(coll, with_duplicates=True)
    # one definition of a group (data.graph.group_members): a POSITIVE link to a uid images.csv lacks makes no
    # group of a DUPLICATE pair, for the splits and for pattern_groups alike (the two once differed here)
    dup = _coll(uids + ["d1", "d2"], conns + [("d1", "d2", "DUPLICATE", None), ("d1", "ghost2", "POSITIVE", None)])
    assert "d1" not in pattern_groups(dup, with_duplicates=True) and "d1" not in assign_splits(dup).group_of()
    assert usable_negatives(coll, split_of, groups=split.group_of()) == usable_negatives(coll, split_of)
