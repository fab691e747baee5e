import pytest

from shapeyard.wire import names
from shapeyard.wire.errors import InvalidArgument


def test_parses_shapes_with_and_without_version():
    bare = names.training_shape("accounts/fireworks/trainingShapes/qwen3p5-9b-256k")
    assert (bare.account, bare.id, bare.version) == ("fireworks", "qwen3p5-9b-256k", None)
    pinned = names.training_shape("accounts/fireworks/trainingShapes/qwen3p5-9b-256k/versions/abcd1234")
    assert pinned.version == "abcd1234"
    assert pinned.parent == "accounts/fireworks/trainingShapes/qwen3p5-9b-256k"
    assert str(pinned) == "accounts/fireworks/trainingShapes/qwen3p5-9b-256k/versions/abcd1234"


@pytest.mark.parametrize(
    "name",
    [
        "qwen3p5-9b-256k",
        "ts-qwen3-8b-policy",
        "accounts/fireworks/trainingShapes/",
        "accounts/fireworks/trainingShapes/Qwen3",
        "accounts/fireworks/trainingShapes/-bad",
        "accounts/fireworks/models/qwen3-8b",
        "accounts/fireworks/trainingShapes/x/versions/",
        "accounts/fireworks/trainingShapes/x/versions/v1/extra",
        "accounts/fire_works/trainingShapes/x",
    ],
)
def test_malformed_shape_names_show_the_expected_form(name):
    with pytest.raises(InvalidArgument) as err:
        names.training_shape(name)
    assert "accounts/<account>/trainingShapes/<id>" in err.value.message
    assert repr(name) in err.value.message


def test_versioned_and_unversioned_requirements():
    with pytest.raises(InvalidArgument, match=r"expected accounts/<account>/models/<id>$"):
        names.model("accounts/fireworks/models/qwen3-8b/versions/v1")
    with pytest.raises(InvalidArgument, match="versions/<version>"):
        names.parse("accounts/a/trainingShapes/s", "trainingShapes", versioned=True)


def test_ids_longer_than_63_characters_are_refused():
    with pytest.raises(InvalidArgument):
        names.check_id("job id", "a" * 64)
    assert names.check_id("job id", "a" * 63) == "a" * 63
