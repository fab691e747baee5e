import pytest

from shapeyard.shapes.filters import parse_filter
from shapeyard.wire.errors import InvalidArgument

FIELDS = {"snapshot.base_model": ("model", str), "latest_validated": ("latest", bool), "ctx": ("ctx", int)}
RECORDS = [
    {"model": "m1", "latest": True, "ctx": 100},
    {"model": "m1", "latest": False, "ctx": 200},
    {"model": "m2", "latest": True, "ctx": 300},
]


def select(text):
    keep = parse_filter(text, FIELDS)
    return [r for r in RECORDS if keep(r)]


def test_terms_joined_by_and():
    assert select('snapshot.base_model="m1" AND latest_validated=true') == [RECORDS[0]]
    assert select("ctx>=200") == RECORDS[1:]
    assert select("ctx!=200 AND snapshot.base_model=m2") == [RECORDS[2]]
    assert select("") == RECORDS


def test_unknown_field_names_the_supported_ones():
    with pytest.raises(InvalidArgument, match=r"'snapshot.nope' is not supported; supported fields: ctx, "):
        select("snapshot.nope=1")


def test_wrong_value_type_and_malformed_terms():
    with pytest.raises(InvalidArgument, match="needs a int value"):
        select("ctx=big")
    with pytest.raises(InvalidArgument, match="needs a bool value"):
        select("latest_validated=maybe")
    with pytest.raises(InvalidArgument, match="malformed"):
        select("ctx")
