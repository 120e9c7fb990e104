"""Cluster metrics on hand-made cases, with the expected values worked out by hand in the comments."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cluster.clusters_file import ClusterTable
from cluster.quality import (
    evaluate,
    format_report,
    pair_confusion,
    precision_recall_f1,
    singleton_noise,
    write_report,
)
from data.collection import Collection, Connection, ImageRecord


def _collection(uids, edges):
    images = [ImageRecord(uid=u, path=f"{u}.jpg", url=None, meta={}, line=i + 2) for i, u in enumerate(uids)]
    conns = [Connection(a=a, b=b, type=t, line=i + 2) for i, (a, b, t) in enumerate(edges)]
    return Collection(root=Path("."), images=images, connections=conns)


def _table(uids, labels):
    n = len(uids)
    return ClusterTable(
        uids=uids, labels=labels, order=np.arange(n), reachability=np.zeros(n), core_distance=np.zeros(n)
    )


def test_pair_confusion_by_hand():
    # clusters {0,1,2} {3,4}, noise 5 6; groups A={0,1,3} B={2,4,5} C={6}? (6 alone in group C)
    pred = [0, 0, 0, 1, 1, -1, -1]
    true = ["A", "A", "B", "A", "B", "B", None]
    # predicted pairs: C(3,2)+C(2,2) = 4; true pairs: A has 3 -> 3, B has 3 -> 3 : 6
    # both: cluster0 x A {0,1} -> 1; cluster0 x B {2} -> 0; cluster1 x A {3}, x B {4} -> 0 => 1
    assert pair_confusion(pred, true) == (4, 6, 1)
    assert precision_recall_f1(4, 6, 1) == (0.25, 1 / 6, pytest.approx(2 * 0.25 * (1 / 6) / (0.25 + 1 / 6)))


def test_noise_is_never_a_cluster():
    # all four images are noise and all four share one pattern group: no pair is predicted
    pred = [-1, -1, -1, -1]
    true = ["A", "A", "A", "A"]
    assert pair_confusion(pred, true) == (0, 6, 0)
    p, r, f = precision_recall_f1(0, 6, 0)
    assert p is None and r == 0.0 and f is None  # no precision without predictions; recall 0
    # as singletons for ARI: four different clusters vs one group -> ARI 0, not 1
    lab = singleton_noise(pred)
    assert len(set(lab.tolist())) == 4
    assert adjusted_rand_score(true, lab) == 0.0
    # if noise had been one big cluster, everything would look perfect: this is what we refuse
    assert adjusted_rand_score(true, [-1, -1, -1, -1]) == 1.0


def test_singleton_noise_keeps_clusters():
    np.testing.assert_array_equal(singleton_noise([2, -1, 0, -1, 2]), [2, 3, 0, 4, 2])


def test_evaluate_by_hand():
    uids = ["a", "b", "c", "d", "e", "f", "g", "h"]
    # clusters: 0 = {a, b, c}, 1 = {d, e}; noise f, g, h
    labels = [0, 0, 0, 1, 1, -1, -1, -1]
    edges = [
        ("a", "b", "POSITIVE"),  # group {a, b, c} via a-b and b-c
        ("b", "c", "POSITIVE"),
        ("d", "f", "POSITIVE"),  # group {d, f}
        ("d", "e", "NEGATIVE"),  # known, not positive
        ("a", "b", "DUPLICATE"),  # the same pair known twice, with two types
        ("g", "h", "POSITIVE"),  # group {g, h}, both noise
    ]
    r = evaluate(_table(uids, labels), _collection(uids, edges))
    assert r.n_clusters == 2
    assert r.noise_fraction == 3 / 8
    assert r.size_histogram == {2: 1, 3: 1}
    # predicted pairs: ab ac bc de = 4. true pairs: ab ac bc (group abc), df, gh = 5. both: ab ac bc = 3
    assert (r.predicted_pairs, r.true_pairs, r.true_positive_pairs) == (4, 5, 3)
    assert r.precision == 3 / 4 and r.recall == 3 / 5
    # predicted pairs with both images in a group: ab ac bc (e has no group) -> 3, all true
    assert r.precision_known == 1.0
    # proposed pairs: ab (POSITIVE + DUPLICATE), bc (POSITIVE), de (NEGATIVE) known directly; ac only implied
    # by the group (a-b-c chain); none new
    assert r.proposed_pairs_known == 3
    assert r.proposed_pairs_known_by_type == {"DUPLICATE": 1, "NEGATIVE": 1, "POSITIVE": 2}
    assert r.proposed_pairs_implied == 1
    assert r.proposed_pairs_new == 0
    # ARI on images with a group: a b c d f g h; truth abc|df|gh; predicted abc|d|f|g|h (noise singletons)
    true = [0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 1, 2, 3, 4]
    assert r.ari == pytest.approx(adjusted_rand_score(true, pred))
    assert r.images_with_group == 7 and r.pattern_groups == 3


def test_new_pairs_are_counted():
    uids = ["a", "b", "c", "d"]
    r = evaluate(_table(uids, [0, 0, 0, 0]), _collection(uids, [("a", "b", "POSITIVE")]))
    # 6 proposed pairs: ab known, none implied beyond it, 5 new
    assert (r.proposed_pairs_known, r.proposed_pairs_implied, r.proposed_pairs_new) == (1, 0, 5)
    assert r.precision == 1 / 6 and r.recall == 1.0


def test_report_json_and_table(tmp_path):
    uids = ["a", "b", "c"]
    r = evaluate(_table(uids, [0, 0, -1]), _collection(uids, [("a", "b", "POSITIVE")]))
    out = tmp_path / "q.json"
    write_report(out, r)
    data = json.loads(out.read_text())
    assert data["precision"] == 1.0 and data["size_histogram"] == {"2": 1}
    text = format_report(r)
    assert "pairwise precision" in text and "NEW" in text
