"""The review queue of the annotation page: clusters and proposals, what is decided, one page of a cluster.

Pure bookkeeping (no flask), sized for archives: 10^6 images, 10^5 clusters, a 50,000-member cluster.

- Nothing enumerates the pairs of a cluster. The known links inside each cluster are found once, at start,
  by looking up the cluster of both ends of every known link (O(links)); new pairs = C(size, 2) - known.
- A cluster is decided when an active decision has the same member set (as before: a re-run of OPTICS that
  proposes the same cluster again skips it). Member sets are compared by a 16-byte digest of the sorted uids,
  not kept as sets: memory O(clusters) beyond the member lists.
- The decisions are indexed incrementally as records are appended (a full re-index only after an undo or a
  log read again from disk): which member sets are decided, and the annotated edges inside each cluster.
- The page receives one page of a cluster (`PAGE_SIZE` members) and the links that touch it, never all
  members of a big cluster.
- Several annotators: every decision is indexed under its annotator too. By default a cluster is done when anyone
  decided it (experts share the work); a queue made for one annotator (`annotator=`, the app's `--independent`)
  counts only that annotator's decisions, so each one judges every cluster and their verdicts can be compared
  (`cluster.agreement`). A view lists the other annotators' verdicts on the cluster either way.
- Proposals (selections made on the map, `proposals.jsonl`) come first in the queue, in the order they were
  made: the expert asked for them. Their cluster ids are negative (see `cluster.annotations`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from cluster.annotations import ADD, DECISION, AnnotationLog, members_key
from cluster.review import known_inside, order_clusters

PAGE_SIZE = 60

Link = tuple[str, str, str]  # (a, b, TYPE), a < b


def _n_pairs(k: int) -> int:
    return k * (k - 1) // 2


class PageError(ValueError):
    """A page number outside the cluster's pages."""


class ReviewQueue:
    """Clusters (clusters.csv) and proposals in review order, with their known links and decided state."""

    def __init__(self, clusters: dict[int, list[str]], known: Mapping[tuple[str, str], set[str]],
                 clusters_sha256: str | None = None, annotator: str | None = None) -> None:
        self.clusters = clusters  # clusters.csv's, then proposals added under their negative ids
        self.known = known
        self.home: dict[str, int] = {u: cid for cid, ms in clusters.items() for u in ms}
        self.proposal_home: dict[str, set[int]] = {}
        self.proposals: dict[int, dict] = {}  # cid -> its record in proposals.jsonl
        self.links_in: dict[int, list[Link]] = {cid: [] for cid in clusters}
        for (a, b), types in known.items():
            cid = self.home.get(a)
            if cid is not None and cid == self.home.get(b):
                self.links_in[cid].extend((a, b, t) for t in sorted(types))
        self.n_known = known_inside(clusters, known)
        self.order = order_clusters(clusters, known)
        self.rank = {cid: i for i, cid in enumerate(self.order)}
        self.keys: dict[int, bytes] = {cid: members_key(ms) for cid, ms in clusters.items()}
        self.by_key: dict[bytes, list[int]] = {}
        for cid, key in self.keys.items():
            self.by_key.setdefault(key, []).append(cid)
        self.annotator = annotator  # None: a cluster anyone decided is done; else only this annotator's count
        # member set -> the decision that makes it done for this queue: the latest (its annotator's own, if any)
        self._done: dict[bytes, dict] = {}
        self._verdicts: dict[bytes, dict[str, dict]] = {}  # member set -> annotator -> their latest decision
        self._annotated: dict[int, list[Link]] = {}
        # images added from a search, per cluster: cid -> uid -> its "add" record. An addition names its cluster
        # by id, which means the same images only under the clusters file it was made with (or a proposal's id)
        self.clusters_sha256 = clusters_sha256
        self._added: dict[int, dict[str, dict]] = {}
        self._seen: tuple[AnnotationLog, int] | None = None  # (the log object indexed, how many of its records)
        self._version = 0  # changes whenever what is decided, or the queue, changes
        self._current: tuple[int, int | None] | None = None

    # -- the queue ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.proposals) + len(self.order)

    def __contains__(self, cid: object) -> bool:
        return cid in self.clusters

    def __iter__(self):
        yield from self.proposals  # in the order they were made
        yield from self.order

    def position(self, cid: int) -> int:
        """1-based place in the queue."""
        if cid in self.proposals:
            return list(self.proposals).index(cid) + 1
        return len(self.proposals) + self.rank[cid] + 1

    def add_proposal(self, record: dict, members: list[str]) -> None:
        """Queue a proposal (a record of proposals.jsonl, its uids checked and ordered by the caller)."""
        cid = record["cluster"]
        self.clusters[cid] = members
        self.proposals[cid] = record
        for u in members:
            self.proposal_home.setdefault(u, set()).add(cid)
        on = set(members)
        # the known links inside the proposal: a scan of the known links, O(links), once per proposal
        self.links_in[cid] = [(a, b, t) for (a, b), types in self.known.items() if a in on and b in on
                              for t in sorted(types)]
        self.n_known[cid] = len({(a, b) for a, b, _ in self.links_in[cid]})
        self.keys[cid] = key = members_key(members)
        self.by_key.setdefault(key, []).append(cid)
        self._seen = None  # annotated edges may fall inside the new proposal: index again
        self._version += 1

    def proposal_with(self, members: Iterable[str]) -> int | None:
        """The proposal with exactly these members, if one was made already."""
        return next((c for c in self.by_key.get(members_key(members), ()) if c in self.proposals), None)

    # -- decisions ---------------------------------------------------------------------------------
    def _homes(self, u: str) -> set[int]:
        """The clusters and proposals that hold `u`."""
        c = self.home.get(u)
        out = set(self.proposal_home.get(u, ()))
        if c is not None:
            out.add(c)
        return out

    def _index(self, rec: dict) -> None:
        if rec.get("decision") == ADD:
            self._index_addition(rec)
        else:
            key = members_key(rec["members"])
            if self.annotator is None or rec.get("annotator") == self.annotator:
                self._done[key] = rec
            # each annotator keeps the place of their first decision: first decided first (`cluster.agreement`)
            self._verdicts.setdefault(key, {})[rec.get("annotator", "?")] = rec
        for a, b, t in rec["edges"]:
            ha = self._homes(a)
            if not ha:
                continue
            hb = self._homes(b)
            for cid in ha & hb:
                self._annotated.setdefault(cid, []).append((a, b, t) if a <= b else (b, a, t))

    def _index_addition(self, rec: dict) -> None:
        cid = rec.get("cluster")
        same_file = cid is not None and (cid < -1 or self.clusters_sha256 in (None, rec.get("clusters_sha256")))
        if same_file and cid in self.clusters:
            self._added.setdefault(cid, {})[rec["members"][0]] = rec

    def added(self, cid: int) -> dict[str, dict]:
        """The images added to this cluster from a search (decisions in force): uid -> its record."""
        return self._added.get(cid, {})

    def sync(self, log: AnnotationLog) -> None:
        """Bring the decided state up to `log`: only new records when decisions were appended, all over again
        after an undo (it takes a decision back) or when the log object was replaced (read again from disk)."""
        seen = self._seen
        records = log.records
        fresh = seen is None or seen[0] is not log or seen[1] > len(records) or any(
            r["kind"] != DECISION for r in records[seen[1]:])
        if fresh:
            self._done, self._annotated, self._added, self._verdicts = {}, {}, {}, {}
            for rec in log.active_decisions():
                self._index(rec)
        else:
            for rec in records[seen[1]:]:
                self._index(rec)
        if fresh or seen is None or seen[1] != len(records):
            self._version += 1
        self._seen = (log, len(records))

    def decision_of(self, cid: int) -> dict | None:
        """The decision that makes this cluster done for this queue (the latest; its annotator's own)."""
        return self._done.get(self.keys[cid])

    def verdicts_of(self, cid: int) -> dict[str, dict]:
        """Each annotator's latest decision in force on this cluster (annotator -> record), first decided first."""
        return self._verdicts.get(self.keys[cid], {})

    def is_done(self, cid: int) -> bool:
        return self.decision_of(cid) is not None

    def progress(self) -> dict:
        done = sum(len(self.by_key.get(k, ())) for k in self._done)
        return {"done": done, "left": len(self) - done, "total": len(self)}

    def current(self) -> int | None:
        """The first cluster of the queue that is not decided (cached until the decisions or proposals change)."""
        if self._current is None or self._current[0] != self._version:
            self._current = (self._version, next((c for c in self if not self.is_done(c)), None))
        return self._current[1]

    # -- one page of a cluster ---------------------------------------------------------------------
    def view(self, cid: int, page: int, describe: Callable[[str], dict]) -> dict:
        """One page of a cluster for the page: its members (with `describe(uid)`'s fields), the links that touch
        them (known ones from connections.csv, annotated ones from decisions not yet accepted), its facts."""
        members = self.clusters[cid]
        pages = max(1, -(-len(members) // PAGE_SIZE))
        if not 1 <= page <= pages:
            raise PageError(f"page {page} of cluster {cid} does not exist; it has {pages} page(s) of {PAGE_SIZE}.")
        start = (page - 1) * PAGE_SIZE
        shown = members[start:start + PAGE_SIZE]
        number = {u: i + 1 for i, u in enumerate(members)}
        on_page = set(shown)
        links, seen = [], set()
        for source, found in (("connections.csv", self.links_in.get(cid, ())),
                              ("annotated", self._annotated.get(cid, ()))):
            for a, b, t in found:
                if a in on_page or b in on_page:
                    na, nb = sorted((number[a], number[b]))
                    if (na, nb, t) not in seen:
                        seen.add((na, nb, t))
                        links.append({"a": na, "b": nb, "type": t, "source": source})
        links.sort(key=lambda x: (x["a"], x["b"], x["type"]))
        done = self.decision_of(cid)
        proposal = self.proposals.get(cid)
        return {
            "id": cid,
            "kind": "proposal" if proposal else "cluster",
            "note": proposal.get("note", "") if proposal else "",
            "position": self.position(cid),
            "size": len(members),
            "new_pairs": _n_pairs(len(members)) - self.n_known.get(cid, 0),
            "page": page,
            "pages": pages,
            "page_size": PAGE_SIZE,
            "members": [{"n": number[u], "uid": u, **describe(u)} for u in shown],
            "links": links,
            "decision": None if done is None else _decided(done, shown),
            "verdicts": [{"annotator": who, "decision": r["decision"], "id": r["id"], "ticked": len(r["ticked"])}
                         for who, r in self.verdicts_of(cid).items()],
            "added": [{"uid": u, "id": r["id"], "query": r.get("query"), **describe(u)}
                      for u, r in self.added(cid).items()],
        }


def _decided(done: dict, shown: list[str]) -> dict:
    """The decision in force on a cluster, as a page of it shows it read-only: which of the members shown it ticked
    and (a split) in which sub-group, so that a verdict, or a disagreement listed by member number, can be seen.
    O(ticked) per page, never per pair."""
    ticked = set(done.get("ticked") or ())
    on_page = set(shown)
    groups = {u: i + 1 for i, g in enumerate(done.get("groups") or ()) for u in g if u in on_page}
    return {"id": done["id"], "decision": done["decision"], "annotator": done.get("annotator"),
            "ticked": len(ticked), "ticked_here": [u for u in shown if u in ticked], "groups_here": groups}


def ticked_from(members: Sequence[str], ticked: list[str] | None, unticked: list[str] | None) -> list[str]:
    """The ticked members of a decision sent as `ticked`, or as `unticked` (all the others: what the page sends
    when most of a big cluster is ticked)."""
    if unticked is None:
        return list(ticked or [])
    out = set(unticked)
    return [m for m in members if m not in out]
