"""What images.csv's own columns say about an image (title, author, date, place), whatever the museum named them.

Why one table: a museum's export names these columns in its own language and capitalisation ("Title",
"titolo", "Artist", "Dating", "Begin Date"), and the annotation page, the report, the search gallery, the
text results and the IIIF export each used to look them up their own way (some only as lower-case "title").
Here: each field's column names in order, looked up without regard to case; the first column that is present
and not blank wins, its value stripped. Nothing is renamed in the user's files: this only reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FIELDS: dict[str, tuple[str, ...]] = {
    "title": ("title", "titel", "titre", "titolo", "título", "description", "name"),
    "author": ("author", "artist", "creator", "maker", "authororiginal", "autore", "auteur", "künstler"),
    "date": ("date", "dating", "year", "begindate", "object_date", "datation", "datum", "datierung", "datazione"),
    "place": ("place", "city", "country", "culture", "luogo", "lieu", "ort"),
}


def column(keys: Iterable[str], names: Iterable[str]) -> str | None:
    """The key among `keys` of the first of `names` that is present, in any case; None if none is."""
    lower: dict[str, str] = {}
    for k in keys:
        lower.setdefault(k.strip().lower(), k)
    return next((lower[n] for n in names if n in lower), None)


def meta_value(meta: Mapping[str, str], name: str) -> str:
    """The image's `name` ("title", "author", "date", "place"): the first non-blank of its columns, or ""."""
    lower: dict[str, str] = {}
    for k, v in meta.items():
        if v and v.strip():
            lower.setdefault(k.strip().lower(), v.strip())
    return next((lower[n] for n in FIELDS[name] if n in lower), "")


def meta_values(meta: Mapping[str, str]) -> dict[str, str]:
    """Every field the image has a value for, in FIELDS' order (title, author, date, place)."""
    out = {name: meta_value(meta, name) for name in FIELDS}
    return {k: v for k, v in out.items() if v}
