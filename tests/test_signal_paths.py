"""Signals by import path (``package.module:function``): loaded, checked, shipped to Ray workers."""

import sys
from pathlib import Path

import pytest

from ipg.driver.config import load_config
from ipg.errors import ExampleError, InputError
from ipg.signals import make_signal, signal_source

pytestmark = pytest.mark.unit

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    yield
    sys.modules.pop("user_signals", None)


def test_a_function_and_a_signal_class_by_import_path(plugins):
    close = make_signal("user_signals:close", tolerance=1)
    assert close.name == "user_signals:close"
    assert close(["it is 43", "it is 46", "none"], [{"answer": "44"}] * 3, [1, 1, 1]) == [1.0, 0.0, 0.0]
    digits = make_signal("user_signals:Digits", weight=2.0)
    assert digits(["a1b22"], [{}], [1]) == [6.0] and digits.name == "user_signals:Digits"


def test_import_errors_and_non_numbers_are_one_clear_error(plugins):
    with pytest.raises(
        InputError, match=r"signal: cannot import 'no_such_module' for 'no_such_module:f' \(ModuleNotFoundError"
    ):
        make_signal("no_such_module:f")
    with pytest.raises(InputError, match=r"signal: module 'user_signals' has no 'missing'"):
        make_signal("user_signals:missing")
    with pytest.raises(InputError, match=r"signal: 'user_signals:' is not an import path"):
        make_signal("user_signals:")
    with pytest.raises(InputError, match=r"signal.params: .*unexpected keyword argument 'nope'"):
        make_signal("user_signals:Digits", nope=1)
    from ipg.attribution import AttributionConfig
    from ipg.generation import Sample
    from ipg.rollouts import _rewards

    words = make_signal("user_signals:words")
    sample = Sample("e1", 0, [1], [2], "hello there")
    with pytest.raises(
        ExampleError,
        match=r"signal 'user_signals:words' failed on example 'e1': TypeError: returned str 'hello', not a number",
    ):
        _rewards(words, {"id": "e1"}, [sample])
    assert AttributionConfig(on_error="skip")  # such an example can be skipped like any failing one


def test_configs_take_import_paths_and_check_them_before_running(plugins):
    cfg = load_config(None, ["--signal=user_signals:close", "--signal_params={tolerance: 2}"])
    assert cfg.signal == "user_signals:close" and cfg.signal_params == {"tolerance": 2}
    with pytest.raises(InputError, match=r"signal: cannot import 'nowhere'"):
        load_config(None, ["--signal=nowhere:fn"])


def test_what_ray_must_ship(plugins):
    assert signal_source("accuracy") is None and signal_source("json:loads") is None  # built-in, stdlib
    assert signal_source("ipg.answers:is_correct") is None  # this project
    assert signal_source("yaml:safe_load") is None  # an installed distribution
    assert signal_source("user_signals:close") == PLUGINS / "user_signals.py"  # a local file: shipped
