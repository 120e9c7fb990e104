"""clusters.csv round trip, the inf/nan spelling, and clear errors for bad files."""

import json

import numpy as np
import pytest

from cluster.clusters_file import ClustersFileError, ClusterTable, read_clusters, sidecar_path, write_clusters


def _table():
    return ClusterTable(
        uids=["a", "b", "c", "d"],
        labels=np.array([0, -1, 0, 1]),
        order=np.array([0, 3, 1, 2]),
        reachability=np.array([np.inf, 0.1234567890123, 0.05, np.nan]),
        core_distance=np.array([0.01, np.inf, 1e-17, 0.3]),
        params={"method": "optics", "min_samples": 2},
    )


def test_round_trip_is_exact(tmp_path):
    t = _table()
    p = tmp_path / "clusters.csv"
    write_clusters(p, t)
    back = read_clusters(p)
    assert back.uids == t.uids
    np.testing.assert_array_equal(back.labels, t.labels)
    np.testing.assert_array_equal(back.order, t.order)
    np.testing.assert_array_equal(back.reachability, t.reachability)  # bit-exact, inf and nan included
    np.testing.assert_array_equal(back.core_distance, t.core_distance)
    assert back.params == {"method": "optics", "min_samples": 2, "n": 4}
    text = p.read_text()
    assert text.splitlines()[0] == "uid,cluster,order,reachability,core_distance"
    assert "a,0,0,inf,0.01" in text and "d,1,2,nan,0.3" in text
    assert json.loads(sidecar_path(p).read_text())["method"] == "optics"
    assert not [x for x in tmp_path.iterdir() if ".tmp" in x.name]


def test_ordering_and_clusters():
    t = _table()
    np.testing.assert_array_equal(t.ordering, [0, 2, 3, 1])  # rows in OPTICS order
    assert t.clusters() == {0: ["a", "c"], 1: ["d"]}  # noise (-1) is never a cluster


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("uid,label\n", "header"),
        ("uid,cluster,order,reachability,core_distance\na,x,0,1,1\n", ":2: column 'cluster'"),
        (
            "uid,cluster,order,reachability,core_distance\na,0,0,1,1\nb,0,1,oops,1\n",
            ":3: column 'reachability'",
        ),
        ("uid,cluster,order,reachability,core_distance\na,0,0,1\n", ":2: 4 fields"),
        ("uid,cluster,order,reachability,core_distance\na,-2,0,1,1\n", ":2: cluster -2"),
        ("uid,cluster,order,reachability,core_distance\na,0,0,1,1\na,0,1,1,1\n", "appears twice"),
        ("uid,cluster,order,reachability,core_distance\na,0,0,1,1\nb,0,0,1,1\n", "permutation"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, body, message):
    p = tmp_path / "clusters.csv"
    p.write_text(body)
    with pytest.raises(ClustersFileError, match=message) as exc:
        read_clusters(p)
    assert str(p) in str(exc.value)


def test_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(ClustersFileError, match="python -m cluster optics"):
        read_clusters(tmp_path / "nope.csv")


def test_table_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        ClusterTable(uids=["a"], labels=[0, 1], order=[0], reachability=[0.0], core_distance=[0.0])


def test_whole_columns_and_row_by_row_read_alike(tmp_path):
    """The fast path (whole columns) gives what the row-by-row reader gives, on a file with quoted uids, blank
    rows, padding spaces, inf and nan; where it gives up (a bad row) the row-by-row reader names the line."""
    from cluster.clusters_file import _columns_at_once, _columns_row_by_row

    body = ('uid,cluster,order,reachability,core_distance\n"a,1", 0 ,1,inf,0.5\n\n b ,-1,0,nan,1e-3\n'
            '"c ""q""",2,2,0.25 , 0.125\n')
    path = tmp_path / "clusters.csv"
    path.write_text(body)
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    fast, slow = _columns_at_once(rows), _columns_row_by_row(path)
    assert fast[0] == slow[0] == ["a,1", "b", 'c "q"']
    for f, s in zip(fast[1:], slow[1:], strict=True):
        np.testing.assert_array_equal(f, s)
    table = read_clusters(path)
    assert table.uids == fast[0] and table.labels.tolist() == [0, -1, 2]
    path.write_text(body.replace("2,2,0.25", "2,2,x"))
    with pytest.raises(ClustersFileError, match=r"clusters.csv:5: column 'reachability' is 'x'"):
        read_clusters(path)
