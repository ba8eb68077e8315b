"""Registry[T]: the one name → object table; and that every table in lingua_ray is one."""

import pytest

from lingua_ray.registry import Registry, RegistryError


class MyError(ValueError):
    pass


@pytest.fixture
def colours():
    r = Registry("colour", hint="Add one in colours.py.")
    for name, value in (("red", 1), ("green", 2), ("blue", 3)):
        r.register(name, value)
    return r


def test_get_names_contains_iter(colours):
    assert colours.get("green") == 2 and colours["blue"] == 3
    assert colours.names() == ["blue", "green", "red"]
    assert "red" in colours and "pink" not in colours and None not in colours
    assert set(colours) == {"red", "green", "blue"} and len(colours) == 3
    assert dict(colours.items()) == {"red": 1, "green": 2, "blue": 3}


def test_unknown_lists_valid_names_closest_match_and_hint(colours):
    with pytest.raises(RegistryError) as e:
        colours.get("gren")
    msg = str(e.value)
    assert msg == "unknown colour 'gren'; valid: blue, green, red. Did you mean 'green'? Add one in colours.py."
    with pytest.raises(RegistryError) as e:
        colours.get("zzzzzz")
    assert "valid: blue, green, red." in str(e.value) and "Did you mean" not in str(e.value)
    with pytest.raises(KeyError):  # RegistryError is a KeyError: dict-style callers keep working
        colours["gren"]


def test_unhashable_or_none_name_is_an_unknown_name(colours):
    for bad in (None, ["red"]):
        with pytest.raises(RegistryError, match="unknown colour"):
            colours.get(bad)


def test_duplicate_registration_refused_same_object_harmless(colours):
    colours.register("red", 1)  # the same object again (a re-imported module): harmless
    with pytest.raises(RegistryError, match="colour 'red' is already registered"):
        colours.register("red", 99)
    assert colours.get("red") == 1
    colours.register("red", 99, replace=True)
    assert colours.get("red") == 99


@pytest.mark.parametrize("bad", ["", None, 3])
def test_name_must_be_a_non_empty_str(colours, bad):
    with pytest.raises(RegistryError, match="non-empty str"):
        colours.register(bad, 0)


def test_decorator_registers_and_returns_the_object():
    r = Registry("loader")

    @r.decorator("csv")
    def load_csv():
        return "csv"

    assert r.get("csv") is load_csv and load_csv() == "csv"
    with pytest.raises(RegistryError, match="already registered"):
        r.decorator("csv")(lambda: "other")


def test_domain_error_class(colours):
    r = Registry("widget", error=MyError)
    r.register("a", 1)
    with pytest.raises(MyError, match="unknown widget 'b'; valid: a."):
        r.get("b")
    with pytest.raises(MyError, match="already registered"):
        r.register("a", 2)


def test_unregister(colours):
    colours.unregister("red")
    colours.unregister("red")  # absent: no error
    assert "red" not in colours and colours.names() == ["blue", "green"]


def test_every_name_table_is_a_registry():
    from lingua_ray.corpus import CORPUS_SOURCES, CorpusError
    from lingua_ray.models.adapters import ADAPTERS, UnsupportedModelError
    from lingua_ray.models.loading import GGUF_PACKAGES, ModelLoadError

    for table, error in ((CORPUS_SOURCES, CorpusError), (ADAPTERS, UnsupportedModelError),
                         (GGUF_PACKAGES, ModelLoadError)):
        assert isinstance(table, Registry) and table.error is error
        with pytest.raises(error, match="unknown .*; valid: "):
            table.get("__nope__")
