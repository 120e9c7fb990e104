"""data.metadata: a museum's own column names, in any case and several languages, read as title/author/date/place."""

from data.metadata import FIELDS, column, meta_value, meta_values


def test_any_case_and_language_first_non_blank_wins():
    meta = {"Titolo": "  Madonna col Bambino ", "TITLE": " ", "Artist": "Bellini", "Dating": "c. 1480",
            "Luogo": "Venezia", "Inventory": "INV-1"}  # fmt: skip
    assert meta_value(meta, "title") == "Madonna col Bambino"  # TITLE is blank: the next name that has a value
    assert meta_values(meta) == {"title": "Madonna col Bambino", "author": "Bellini", "date": "c. 1480",
                                 "place": "Venezia"}  # fmt: skip
    assert meta_value({"inventory": "x"}, "title") == "" and meta_values({}) == {}


def test_earlier_names_win_over_later_ones():
    assert meta_value({"description": "a long text", "Title": "Short"}, "title") == "Short"
    assert meta_value({"name": "file.jpg", "Description": "Deposition"}, "title") == "Deposition"


def test_column_names_the_users_key():
    assert column(["uid", "Begin Date", "BeginDate"], FIELDS["date"]) == "Begin Date"  # one name: the first
    assert column(["uid", "path"], FIELDS["date"]) is None


def test_spaces_underscores_and_hyphens_do_not_matter():
    """`data import` and `data demo` write begin_date; museum exports say "Object Begin Date", "Object Date"."""
    for key in ("begin_date", "Begin Date", "Object Begin Date", "Object Date", "OBJECT-DATE"):
        assert meta_value({key: " 1480 "}, "date") == "1480", key
