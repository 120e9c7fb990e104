"""What images.csv's own columns say about an image (title, author, date, place), whatever the museum named them.

Why one table: a museum's export names these columns in its own language and capitalisation ("Title",
"titolo", "Artist", "Dating", "Begin Date"), and the annotation page, the report, the search gallery, the
text results and the IIIF export each used to look them up their own way (some only as lower-case "title").
Here: each field's column names in order, looked up without regard to case, spaces, underscores and hyphens
("Begin Date", "begin_date" and "BeginDate" are one name); the first column that is present and not blank
wins, its value stripped. Nothing is renamed in the user's files: this only reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FIELDS: dict[str, tuple[str, ...]] = {
    "title": ("title", "titel", "titre", "titolo", "título", "description", "name"),
    "author": ("author", "artist", "creator", "maker", "authororiginal", "autore", "auteur", "künstler"),
    "date": ("date", "dating", "year", "begindate", "objectdate", "objectbegindate", "datation", "datum", "datierung",
             "datazione"),
    "place": ("place", "city", "country", "culture", "luogo", "lieu", "ort"),
}


def _name(key: str) -> str:
    """A column name as compared: lower case, without spaces, underscores and hyphens."""
    return "".join(key.lower().replace("_", " ").replace("-", " ").split())


def column(keys: Iterable[str], names: Iterable[str]) -> str | None:
    """The key among `keys` of the first of `names` that is present (compared as `_name` does); None if none is."""
    found: dict[str, str] = {}
    for k in keys:
        found.setdefault(_name(k), k)
    return next((found[_name(n)] for n in names if _name(n) in found), None)


def columns(keys: Iterable[str], name: str) -> list[str]:
    """The keys among `keys` that hold the field `name` ("date"...), in FIELDS' order: where a whole column is
    read (the map's years, its captions and search), each image's value is the first non-blank of these."""
    found = [column(keys, [n]) for n in FIELDS[name]]
    return list(dict.fromkeys(k for k in found if k is not None))


def _filled(meta: Mapping[str, str]) -> dict[str, str]:
    """The image's non-blank values by compared column name (the first column of a name wins)."""
    found: dict[str, str] = {}
    for k, v in meta.items():
        if v and v.strip():
            found.setdefault(_name(k), v.strip())
    return found


def _pick(found: Mapping[str, str], name: str) -> str:
    return next((found[n] for n in FIELDS[name] if n in found), "")


def meta_value(meta: Mapping[str, str], name: str) -> str:
    """The image's `name` ("title", "author", "date", "place"): the first non-blank of its columns, or ""."""
    return _pick(_filled(meta), name)


def meta_values(meta: Mapping[str, str]) -> dict[str, str]:
    """Every field the image has a value for, in FIELDS' order (title, author, date, place)."""
    found = _filled(meta)
    out = {name: _pick(found, name) for name in FIELDS}
    return {k: v for k, v in out.items() if v}
