"""Classes given by id or name resolve by one rule, the runtime's (that of
``flowar generate --class``): ``flowar.Pipeline`` and ``flowar.ray.class_list`` both call
``flowar._flowar.class_ids``."""

import numpy as np
import pytest

import flowar
from flowar import _flowar

NAMES = ["cat", "dog"]


def ids(classes):
    return _flowar.class_ids(classes, 5, NAMES)


def test_ids_names_and_numpy_ints_resolve():
    assert ids([0, "dog", "4", np.int64(3), np.uint8(2)]) == [0, 1, 4, 3, 2]
    assert ids("cat") == [0]
    assert ids(np.int32(4)) == [4]
    assert ids(3) == [3]
    assert ids((c for c in ["dog", 0])) == [1, 0]
    assert ids([]) == []


@pytest.mark.parametrize(
    "classes, message",
    [
        ([5], "class id 5 is out of range: this model has classes 0..4"),
        ([-1], "class id -1 is out of range"),
        (["-1"], "class id -1 is out of range"),
        ([2**70], f"class id {2**70} is out of range"),
        ([-(2**70)], f"class id {-(2**70)} is out of range"),
        (["wolf"], "unknown class `wolf` \\(known names: cat, dog\\)"),
    ],
)
def test_unknown_classes_raise_value_error(classes, message):
    with pytest.raises(ValueError, match=message):
        ids(classes)


@pytest.mark.parametrize("classes", [[1.5], [True], True, [None], b"ab", 2.0, [[0]]])
def test_what_is_not_a_class_raises_type_error(classes):
    with pytest.raises(TypeError, match="a class is an id \\(int\\) or a name \\(str\\)"):
        ids(classes)


def test_a_model_without_names_takes_numbers():
    with pytest.raises(ValueError, match="this model has no class names; use a number"):
        _flowar.class_ids(["cat"], 5, [])


def test_the_pipeline_resolves_by_the_same_rule(demo):
    pipe = flowar.Pipeline(demo, provider="tract", threads=1)
    names = pipe.class_names
    want = _flowar.class_ids([np.int64(3), names[1], "2"], pipe.num_classes, names)
    assert pipe._class_ids([np.int64(3), names[1], "2"]) == want == [3, 1, 2]
    with pytest.raises(ValueError) as raised:
        pipe.generate(["no-such-shape"])
    with pytest.raises(ValueError) as direct:
        _flowar.class_ids(["no-such-shape"], pipe.num_classes, names)
    assert str(raised.value) == str(direct.value)
