"""One object that answers queries against an index: the glue of `model search` and the annotation app.

It opens the index, keeps the exact searcher (its blocks resident on the device when asked: the app
answers many queries, the CLI one), loads the network only when a query needs pixels (an image file or a
box), and finds each hit's collection, metadata and size, so callers only present the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.index import SearchIndex
from model.query import Encoder, Query, QueryError, make_query
from model.search import Hit, Searcher


@dataclass(frozen=True)
class Answer:
    query: Query
    hits: list[Hit]


class SearchService:
    def __init__(self, index_dir: str | Path, *, weights: str | None = None, resident: bool = False,
                 collection: str | None = None) -> None:
        self.index = SearchIndex.open(index_dir)
        self.searcher = Searcher(self.index, resident=resident)
        self.encoder = Encoder(self.index, weights)
        self.fallback = collection  # where hits are looked up when their recorded collection cannot be read
        self.unreadable: set[str] = set()  # recorded collections that could not be read (moved?)
        self._collections: dict[str, object] = {}

    def ask(self, *, uid: str | None = None, image: str | Path | None = None,
            box: tuple[int, int, int, int] | None = None, k: int = 20, collection: str | None = None) -> Answer:
        """The top `k` images for a uid or an image file, restricted to `box` when given (`model.query`)."""
        if k < 1:
            raise QueryError(f"-k {k}: ask for at least one result.")
        query = make_query(self.index, uid=uid, image=image, box=box, collection=collection or self.fallback,
                           encoder=self.encoder)
        return Answer(query, self.searcher.search(query.vector[None], k, [query.exclude])[0])

    def collection(self, folder: str | None):
        """The collection at `folder`, read once (None when it cannot be read: callers show the uid alone)."""
        from data.collection import CollectionError, load_collection

        if folder is None:
            return None
        if folder not in self._collections:
            try:
                self._collections[folder] = load_collection(folder, quiet=True)
            except (CollectionError, OSError):
                self._collections[folder] = None
        return self._collections[folder]

    def query_collection(self, query):
        """The collection of the query's image: --collection, else the one the index recorded for it (None for a
        file query)."""
        recorded = self.index.collection_of(query.exclude) if query.exclude is not None else None
        return self.collection(self.fallback or recorded)

    def collection_of(self, hit: Hit):
        """The hit's collection: the one the index recorded, else --collection when that lists the uid."""
        folder = self.index.collection_of(hit.number)
        coll = self.collection(folder)
        if (coll is None or hit.uid not in coll) and self.fallback is not None:
            other = self.collection(self.fallback)
            if other is not None and hit.uid in other:
                return other
        if coll is None and folder is not None:
            self.unreadable.add(folder)
        return coll

    def metadata(self, hits: list[Hit], extra_uid: str | None = None, extra_collection=None) -> dict[str, dict]:
        """uid -> images.csv's columns (title, author, date, ...) for every hit (and the query's uid)."""
        out: dict[str, dict] = {}
        for h in hits:
            coll = self.collection_of(h)
            if coll is not None and h.uid in coll:
                out[h.uid] = dict(coll.record(h.uid).meta)
        if extra_uid and extra_collection is not None and extra_uid in extra_collection:
            out[extra_uid] = dict(extra_collection.record(extra_uid).meta)
        return out
