"""What `model search` writes: the JSON of a query's results, a self-contained HTML gallery, a text table.

The gallery is one file that opens anywhere (sent by e-mail, put on a shared drive): thumbnails are
embedded as data URIs (from the collection's thumbnail cache, `data.thumbs`, made when missing), each
hit's best-matching region is drawn as a box in percent of its picture (so it stays in place at any
size), and the metadata of images.csv (title, author, date) is shown under each picture. An image whose
thumbnail cannot be made says why instead of showing an empty frame.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from data.atomic import atomic_write_text
from data.metadata import meta_value, meta_values
from model.query import Query
from model.search import Hit

META_FIELDS = ("title", "author", "date")  # data.metadata's fields, shown in this order
LEGEND = ("score: how far the match stands above this index's unrelated images, in standard deviations (the "
          "ranking; compare within one query); cosine: the matched vector's own similarity")


def results_json(query: Query, hits: list[Hit], *, index: str, k: int) -> dict:
    return {"query": {**query.as_json(), "index": index, "k": k}, "results": [h.as_json() for h in hits]}


def write_json(path: str | Path, doc: dict) -> None:
    atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def text_table(query: Query, hits: list[Hit], metadata: dict[str, dict]) -> str:
    what = f"uid {query.uid}" if query.uid else f"image {query.image}"
    if query.box:
        what += f", box {','.join(map(str, query.box))}"
    lines = [f"{len(hits)} result{'s' * (len(hits) != 1)} for {what}:",
             f"{'rank':>4}  {'score':>7}  {'cosine':>7}  {'box':<22} uid / title"]
    for rank, h in enumerate(hits, 1):
        box = ",".join(map(str, h.box)) if h.box else "whole image"
        title = meta_value(metadata.get(h.uid, {}), "title")
        lines.append(f"{rank:>4}  {h.score:7.4f}  {h.similarity:7.4f}  {box:<22} {h.uid}" + (f"  {title}" if title else ""))
    lines.append(LEGEND)
    return "\n".join(lines)


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def thumbnail_uri_of_file(path: str | Path, size: int = 256) -> str | None:
    from data.image import ImageReadError, jpeg_thumbnail

    try:
        return _data_uri(jpeg_thumbnail(path, size).jpeg)
    except ImageReadError:
        return None


def _box_div(box, size) -> str:
    if not box or not size or not size[0] or not size[1]:
        return ""
    x, y, w, h = box
    W, H = size  # noqa: N806
    style = f"left:{100 * x / W:.2f}%;top:{100 * y / H:.2f}%;width:{100 * w / W:.2f}%;height:{100 * h / H:.2f}%"
    return f'<div class="box" style="{style}"></div>'


def _figure(uri: str | None, why: str | None, box, size, caption: str) -> str:
    pic = (f'<div class="pic"><img src="{uri}" alt="">{_box_div(box, size)}</div>' if uri else
           f'<div class="pic missing">{html.escape(why or "no picture")}</div>')
    return f"<figure>{pic}<figcaption>{caption}</figcaption></figure>"


def _caption(uid: str, meta: dict, extra: str) -> str:
    parts = [f"<b>{html.escape(uid)}</b>{extra}"]
    values = meta_values(meta)
    for key in META_FIELDS:
        if key in values:
            parts.append(f'<span class="{key}">{html.escape(values[key])}</span>')
    return "<br>".join(parts)


_STYLE = """body{font:14px/1.35 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.2em}.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;width:220px}.pic{position:relative;display:inline-block;line-height:0}
.pic img{max-width:220px;max-height:220px}.box{position:absolute;border:2px solid #e4003a;
box-shadow:0 0 0 1px #fff;box-sizing:border-box}.missing{width:220px;height:120px;background:#eee;
line-height:1.3;padding:8px;box-sizing:border-box;color:#833}figcaption{font-size:12px;margin-top:4px;
word-break:break-word}.query{margin-bottom:1.5em}.score{color:#555}"""


def gallery_html(query: Query, hits: list[Hit], *, metadata: dict[str, dict], thumbs: dict[str, tuple],
                 query_thumb: str | None, index: str) -> str:
    """The page (see the module docstring). `thumbs`: uid -> (data URI or None, why not, (width, height))."""
    qname = f"uid {query.uid}" if query.uid else f"image {Path(query.image).name}"
    qmeta = metadata.get(query.uid, {}) if query.uid else {}
    qcap = _caption(query.uid or Path(query.image).name, qmeta,
                    f" &middot; box {','.join(map(str, query.box))}" if query.box else " &middot; whole image")
    cards = []
    for rank, h in enumerate(hits, 1):
        uri, why, size = thumbs.get(h.uid, (None, "no thumbnail", None))
        where = "region" if h.box else "whole image"
        extra = (f' <span class="score">#{rank} &middot; score {h.score:.3f} (cosine {h.similarity:.3f}) &middot; '
                 f'{where}</span>')
        cards.append(_figure(uri, why, h.box, size, _caption(h.uid, metadata.get(h.uid, {}), extra)))
    return (f"<!doctype html><html lang=en><meta charset=utf-8><title>Search: {html.escape(qname)}</title>"
            f"<style>{_STYLE}</style><h1>Where else does this appear? {html.escape(qname)}</h1>"
            f'<p>Index {html.escape(index)}: {len(hits)} results, best first; a red box is the region of the '
            f"result that matched best (none: the whole image did). {html.escape(LEGEND)}.</p>"
            f'<div class="query">{_figure(query_thumb, "query picture unreadable", query.box, query.size, qcap)}</div>'
            f'<div class="grid">{"".join(cards)}</div></html>\n')


def collect_thumbs(hits: list[Hit], collections: dict[str, object], sizes: dict[str, tuple[int, int]]) -> dict:
    """uid -> (data URI or None, why not, size) for each hit, from its collection's thumbnail cache."""
    from data.image import ImageReadError
    from data.thumbs import ThumbCache, ThumbCacheError

    caches: dict[str, ThumbCache] = {}
    out = {}
    for h in hits:
        coll = collections.get(h.uid)
        if coll is None:
            out[h.uid] = (None, "its collection could not be read", sizes.get(h.uid))
            continue
        cache = caches.setdefault(str(coll.root), ThumbCache.for_collection(coll))
        try:
            out[h.uid] = (_data_uri(cache.get(h.uid)), None, sizes.get(h.uid))
        except (ImageReadError, ThumbCacheError) as e:
            out[h.uid] = (None, str(e), sizes.get(h.uid))
    return out


def query_thumbnail(query: Query, collection) -> str | None:
    """The query's picture as a data URI: its file, or the indexed image's cached thumbnail."""
    if query.image:
        return thumbnail_uri_of_file(query.image)
    if collection is not None and query.uid in collection:
        from data.image import ImageReadError
        from data.thumbs import ThumbCache, ThumbCacheError

        try:
            return _data_uri(ThumbCache.for_collection(collection).get(query.uid))
        except (ImageReadError, ThumbCacheError):
            return None
    return None


def write_gallery(path: str | Path, page: str) -> None:
    atomic_write_text(path, page)
