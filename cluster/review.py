"""The review of proposed clusters: which one the expert sees next, and the edges each decision implies.

Pure functions, shared by the annotation page (`cluster.annotate`), which shows the clusters in this order
and records what `implied_edges` returns, and by the report (`cluster.report`), which shows the same order.

Order: largest-new-first. A cluster is worth the expert's time in proportion to what it can add, so
clusters are ranked by the number of member pairs that are *not* already a known connection (of any
type: a pair known as NEGATIVE is not news either), then by size, then by cluster id, so the order is
fully deterministic.

Scale: nothing here enumerates the pairs of a cluster. The known pairs inside each cluster are counted from
the list of known links (each link looks up the cluster of its two ends), so new pairs = C(size, 2) - known
inside, and ordering every cluster costs O(n + links + C log C) for n clustered images and C clusters. A
decision on k members writes O(k) edges (see `implied_edges`), never k(k-1)/2.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import combinations

from data.collection import DUPLICATE, NEGATIVE, POSITIVE, SIMILAR

# decision name -> (label shown on the page, keyboard shortcut)
DECISIONS: dict[str, tuple[str, str]] = {
    "confirm": ("Confirm pattern", "c"),
    "confirm_reject": ("Confirm, reject the rest", "r"),
    "similar": ("Similar", "s"),
    "duplicate": ("Duplicates", "d"),
    "wrong": ("Wrong cluster", "w"),
    "skip": ("Skip", "n"),
    "split": ("Split into sub-groups", "p"),
}

# "split": the expert sorts members into sub-groups (each a pattern of its own); the record keeps them under
# "groups" and its edges come from `split_edges`, not `implied_edges` (which has only the ticked members)
SPLIT = "split"


# the decisions whose ticked members form a group: an image added to such a decided cluster joins those
GROUP_DECISIONS = ("confirm", "confirm_reject", "similar", "duplicate")


class DecisionError(ValueError):
    """A decision that cannot be applied to this cluster (the message says what to tick)."""


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _pairs(k: int) -> int:
    return k * (k - 1) // 2


def _cluster_homes(clusters: Mapping[int, Sequence[str]]) -> tuple[dict[str, int], dict[str, set[int]]]:
    """uid -> its cluster, and, apart, uid -> its clusters for the uids in more than one (a proposal made on
    the map overlaps clusters.csv's clusters)."""
    single: dict[str, int] = {}
    several: dict[str, set[int]] = {}
    for cid, members in clusters.items():
        for u in members:
            if u in several:
                several[u].add(cid)
            elif u in single and single[u] != cid:
                several[u] = {single.pop(u), cid}
            elif u not in single:
                single[u] = cid
    return single, several


def known_inside(clusters: Mapping[int, Sequence[str]], known: Collection[tuple[str, str]]) -> dict[int, int]:
    """Per cluster id, how many of its member pairs are a known pair: O(members + links), no pair enumeration.

    Each known link looks up the cluster(s) of its two ends. A pair listed both ways round in `known` counts
    once, as it did when member pairs were enumerated.
    """
    single, several = _cluster_homes(clusters)
    counts: Counter[int] = Counter()
    for a, b in known:
        if a >= b:
            continue
        ca, cb = single.get(a), single.get(b)
        if ca is not None and ca == cb:
            counts[ca] += 1
        elif a in several or b in several:
            ha = several.get(a, {ca} if ca is not None else set())
            hb = several.get(b, {cb} if cb is not None else set())
            for c in ha & hb:
                counts[c] += 1
    return {cid: counts.get(cid, 0) for cid in clusters}


def new_pairs(members: Sequence[str], known: Collection[tuple[str, str]]) -> int:
    """Number of member pairs that are not already a known connection: O(size + links)."""
    return _pairs(len(members)) - known_inside({0: members}, known)[0]


def new_pairs_by_cluster(clusters: Mapping[int, Sequence[str]], known: Collection[tuple[str, str]]) -> dict[int, int]:
    """`new_pairs` of every cluster at once, in O(n + links)."""
    inside = known_inside(clusters, known)
    return {cid: _pairs(len(m)) - inside[cid] for cid, m in clusters.items()}


def order_clusters(clusters: Mapping[int, Sequence[str]], known: Collection[tuple[str, str]]) -> list[int]:
    """Cluster ids, largest-new-first (ties: larger cluster first, then smaller id)."""
    new = new_pairs_by_cluster(clusters, known)
    return sorted(clusters, key=lambda c: (-new[c], -len(clusters[c]), c))


# A confirmed (or similar, duplicate) group of k ticked members is stored as every pair while k <= 2 * RING + 1
# (the ring below is then the complete graph), and above that as a ring: each member joined to the next RING
# members in member (OPTICS) order, cyclically: RING * k edges, each member with 2 * RING partners.
RING = 16
# confirm_reject: each unticked member gets a NEGATIVE edge to every ticked one while there are at most this
# many ticked, else to this many of them (a window that moves on from one rejected member to the next, so that
# together they reach every ticked member).
NEGATIVES_PER_REJECTED = 32
# wrong: each member gets a NEGATIVE edge to the next WRONG_NEXT members in member (OPTICS) order, not cyclically:
# the pairs the clustering found closest, which are the cannot-link evidence that matters (about WRONG_NEXT * k
# edges, each member with up to 2 * WRONG_NEXT partners).
WRONG_NEXT = 2
# what a decision means, shown on its button (title) on the annotation page
DECISION_HINTS = {
    "wrong": "Wrong cluster: these images do not share one pattern. Records NEGATIVE links between neighbouring "
             "members (cannot-link evidence for the next round). If some do share a pattern, tick them and use "
             "confirm-and-reject instead.",
}


def group_pairs(k: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) of a group of k: all of them for k <= 2 * RING + 1, else the ring; sorted.

    Sorted as `itertools.combinations(range(k), 2)` is, so a small group gives exactly that list.
    """
    if k <= 2 * RING + 1:
        return list(combinations(range(k), 2))
    higher: list[list[int]] = [[] for _ in range(k)]
    for i in range(k):
        for d in range(1, RING + 1):
            j = i + d
            if j < k:
                higher[i].append(j)
            else:
                higher[j - k].append(i)  # wraps round: (j - k, i) with j - k < i
    return [(i, j) for i in range(k) for j in sorted(higher[i])]


def rejection_pairs(n_chosen: int, n_rest: int) -> list[tuple[int, int]]:
    """(ticked index, unticked index) pairs of confirm_reject, sorted; every pair while n_chosen is small."""
    per = min(n_chosen, NEGATIVES_PER_REJECTED)
    rest_of: list[list[int]] = [[] for _ in range(n_chosen)]
    for r in range(n_rest):
        start = (r * per) % n_chosen
        for t in range(per):
            rest_of[(start + t) % n_chosen].append(r)
    return [(a, r) for a in range(n_chosen) for r in rest_of[a]]


def wrong_pairs(k: int) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j <= i + WRONG_NEXT, of a cluster of k judged wrong; sorted. All pairs for k <= 3."""
    return [(i, j) for i in range(k) for j in range(i + 1, min(k, i + WRONG_NEXT + 1))]


def decision_label(decision: str) -> str:
    """A decision as the page's button names it ("Confirm, reject the rest", not "confirm_reject"), for messages
    people read; files and JSON keep the name. An image added from a search is "Add to this cluster"."""
    if decision in DECISIONS:
        return DECISIONS[decision][0]
    return "Add to this cluster" if decision == "add" else decision


def implied_edges(decision: str, members: Sequence[str], ticked: Iterable[str]) -> list[list[str]]:
    """The connections a decision asserts, as `[a, b, TYPE]` with a < b; O(size) of them, never O(size^2).

    - confirm: POSITIVE among the ticked members (at least two): every pair of a group of up to
      2 * RING + 1 = 33, a ring of RING * k edges above (`group_pairs`). A pattern group is a connected
      component of POSITIVE links (`data.graph`), so the ring makes the same group; training uses each
      POSITIVE link as an (anchor, positive) pair, so a bare star or chain would leave each member one or
      two partners to train with: the ring gives each 2 * RING;
    - confirm_reject: POSITIVE among the ticked as for confirm, NEGATIVE between each unticked and each
      ticked member, or, above NEGATIVES_PER_REJECTED ticked, that many of them (`rejection_pairs`): training
      uses a NEGATIVE pair (x, y) as an anchor's negative only for those two images, so one edge per
      rejected image would lose most of that; a bounded window keeps it O(size);
    - similar / duplicate: SIMILAR / DUPLICATE among the ticked (at least two), as for confirm;
    - wrong: cannot-link evidence, NEGATIVE between each member and the next WRONG_NEXT members in member
      (OPTICS) order (`wrong_pairs`, about 2 k edges; ticks are ignored). "Wrong cluster" says these images
      do not share one pattern; the pairs the clustering put side by side are the ones it found closest,
      so they are what the next clustering and training must learn to keep apart (training takes them as
      candidates with a bounded share: train/mining.py). If some members do share a pattern, the expert
      ticks them and uses confirm_reject instead;
    - skip: nothing.
    Order: the POSITIVE (or other group) edges by ticked member order, then the NEGATIVE ones by ticked then
    unticked member order: for small clusters exactly the list of all pairs.
    """
    if decision not in DECISIONS:
        raise DecisionError(f"unknown decision {decision!r}; expected one of {', '.join(DECISIONS)}.")
    if decision == SPLIT:
        raise DecisionError("a split needs its sub-groups: assign members to groups (see `split_edges`).")
    ticked_set = set(ticked)
    unknown = ticked_set.difference(members)
    if unknown:
        raise DecisionError(f"ticked uids not in this cluster: {', '.join(sorted(unknown))}.")
    chosen = [m for m in members if m in ticked_set]
    rest = [m for m in members if m not in ticked_set]
    if decision == "skip":
        return []
    if decision == "wrong":
        return [[*pair(members[i], members[j]), NEGATIVE] for i, j in wrong_pairs(len(members))]
    if decision == "confirm_reject":
        if not chosen or not rest:
            raise DecisionError("confirm-and-reject needs at least one ticked and one unticked member.")
        edges = [[*pair(chosen[i], chosen[j]), POSITIVE] for i, j in group_pairs(len(chosen))]
        edges += [[*pair(chosen[a], rest[r]), NEGATIVE] for a, r in rejection_pairs(len(chosen), len(rest))]
        return edges
    if len(chosen) < 2:
        raise DecisionError(f"tick at least two members for '{DECISIONS[decision][0]}'.")
    kind = {"confirm": POSITIVE, "similar": SIMILAR, "duplicate": DUPLICATE}[decision]
    return [[*pair(chosen[i], chosen[j]), kind] for i, j in group_pairs(len(chosen))]


def split_groups(members: Sequence[str], groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """The sub-groups of a split, checked, each in member order, in the order given; or a DecisionError.

    At least two non-empty groups of members of this cluster, no member in two. A group of one is allowed
    ("this one is apart from the others"): it only gets NEGATIVE edges. Members in no group are left undecided.
    """
    if len(groups) < 2:
        raise DecisionError("a split needs at least two sub-groups (assign members to groups first).")
    on = set(members)
    seen: set[str] = set()
    out = []
    for i, g in enumerate(groups, start=1):
        chosen = set(g)
        if not chosen:
            raise DecisionError(f"sub-group {i} is empty.")
        stray = chosen.difference(on)
        if stray:
            raise DecisionError(f"sub-group {i} names uids not in this cluster: {', '.join(sorted(stray)[:5])}.")
        twice = chosen & seen
        if twice or len(chosen) != len(g):
            what = ", ".join(sorted(twice)[:5]) if twice else "a member twice"
            raise DecisionError(f"sub-group {i} names {what}: a member can be in one sub-group only.")
        seen |= chosen
        out.append([m for m in members if m in chosen])
    return out


def split_negative_pairs(sizes: Sequence[int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """NEGATIVE pairs between the sub-groups of a split, as ((group, index), (group, index)), bounded O(k).

    While the groups hold at most 2 * RING + 1 members together: every pair of members of two different groups.
    Above: each member takes NEGATIVES_PER_REJECTED partners, dealt round the other groups in turn (so with up to
    NEGATIVES_PER_REJECTED + 1 groups every member has a partner in every other group), and inside each group
    from a counter that moves on (so together they reach every member). At most NEGATIVES_PER_REJECTED * k pairs
    for k members, never one per pair of members.
    """
    k, g = sum(sizes), len(sizes)
    out: set[tuple[tuple[int, int], tuple[int, int]]] = set()
    if k <= 2 * RING + 1:
        for a in range(g):
            for b in range(a + 1, g):
                out.update(((a, i), (b, j)) for i in range(sizes[a]) for j in range(sizes[b]))
        return sorted(out)
    nxt = [0] * g  # per group: the member the next partner taken from it is
    for a in range(g):
        for i in range(sizes[a]):
            for t in range(NEGATIVES_PER_REJECTED):
                b = (a + 1 + (i * NEGATIVES_PER_REJECTED + t) % (g - 1)) % g
                j = nxt[b] % sizes[b]
                nxt[b] += 1
                out.add(min(((a, i), (b, j)), ((b, j), (a, i))))
    return sorted(out)


def split_edges(members: Sequence[str], groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """The connections a split asserts: each sub-group a confirmed group (POSITIVE `group_pairs`, nothing for a
    group of one), NEGATIVE between the groups (`split_negative_pairs`); members in no group get no edge.
    O(k) edges. Order: the POSITIVE edges group by group, then the NEGATIVE ones."""
    gs = split_groups(members, groups)
    edges = [[*pair(grp[i], grp[j]), POSITIVE] for grp in gs for i, j in group_pairs(len(grp))]
    edges += [[*pair(gs[a][i], gs[b][j]), NEGATIVE] for (a, i), (b, j) in split_negative_pairs([len(x) for x in gs])]
    return edges


def addition_anchors(members: Sequence[str], decision: dict | None, ticked: Iterable[str] | None) -> list[str]:
    """The members an added image is joined to: those the cluster's decision grouped (confirm, confirm_reject,
    similar, duplicate: its ticked members), else the members ticked on the page, else every member.

    A cluster judged "wrong cluster" has no pattern to add to: refused.
    """
    if decision is not None and decision["decision"] == "wrong":
        raise DecisionError("this cluster was judged 'wrong cluster': there is no pattern to add an image to; "
                            "undo that decision first.")
    if decision is not None and decision["decision"] in GROUP_DECISIONS:
        return list(decision["ticked"])
    if decision is not None and decision["decision"] == SPLIT:
        return _split_anchor_group(decision.get("groups") or [], set(ticked or ()))
    chosen = set(ticked or ())
    return [m for m in members if m in chosen] or list(members)


def _split_anchor_group(groups: Sequence[Sequence[str]], ticked: set[str]) -> list[str]:
    """The sub-group of a split cluster that the ticked members name: an added image joins one of them."""
    hit = [g for g in groups if ticked.intersection(g)]
    if len(hit) != 1:
        raise DecisionError("this cluster was split into sub-groups: tick a member of the one sub-group the image "
                            "belongs to, then add it.")
    return list(hit[0])


def addition_edges(uid: str, anchors: Sequence[str]) -> list[list[str]]:
    """POSITIVE edges joining `uid` to the group `anchors`: to every anchor while there are at most 2 * RING,
    else to 2 * RING of them spread evenly over the member order: the partners a ring gives each member of a
    confirmed group (`group_pairs`), so an added image trains like a confirmed member and the pattern group
    (a connected component of POSITIVE links) takes it in; O(1) edges per addition, never O(size)."""
    others = [a for a in anchors if a != uid]
    if not others:
        raise DecisionError(f"{uid!r} has no member of this cluster to be joined to.")
    n = min(len(others), 2 * RING)
    picked = [others[(i * len(others)) // n] for i in range(n)]
    return [[*pair(uid, a), POSITIVE] for a in picked]
