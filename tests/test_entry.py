"""lingua_ray.entry: the one-line error every entry point prints."""

import pytest

from lingua_ray.entry import DEBUG_ENV, one_line_errors


def _fail():
    raise ValueError("corpus.languages: 'xx' is not in the corpus; valid: en, fr")


def test_returns_the_value_when_nothing_fails():
    assert one_line_errors(lambda: 7) == 7


def test_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        one_line_errors(_fail, prefix="compare", hint=False)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["compare: ValueError: corpus.languages: 'xx' is not in the corpus; valid: en, fr"]


def test_hint_line_and_debug_reraises(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit):
        one_line_errors(_fail)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: ValueError: ") and DEBUG_ENV in err[1]
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError):
        one_line_errors(_fail)
