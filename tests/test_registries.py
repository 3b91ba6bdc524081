"""Every family of named choices lives in one registry: names given once, overrides refused, one default
for a library call and a run, and the config, the CLI's help and the README read the same names."""

import pytest
import yaml

from ipg.advantages import ADVANTAGES
from ipg.answers import FORMATS
from ipg.attribution import AttributionConfig
from ipg.driver.cli import build_parser
from ipg.driver.config import load_config
from ipg.driver.selections import ACCURACY_BASELINES, CONTROL_METHODS, SELECTIONS
from ipg.errors import InputError
from ipg.interventions import INTERVENTIONS
from ipg.methods import DEFAULT, METHODS
from ipg.paths import BASELINES, SCHEDULES, schedule
from ipg.workers.backends import GRADIENT_BACKENDS, ROLLOUT_BACKENDS

pytestmark = pytest.mark.unit

FAMILIES = [
    METHODS,
    SCHEDULES,
    BASELINES,
    ADVANTAGES,
    SELECTIONS,
    ROLLOUT_BACKENDS,
    GRADIENT_BACKENDS,
    FORMATS,
    INTERVENTIONS,
]


@pytest.mark.parametrize("registry", FAMILIES, ids=lambda r: r.what)
def test_a_name_is_registered_once(registry):
    name = next(iter(registry))
    with pytest.raises(ValueError, match=f"'{name}' is already registered; pass replace=True"):
        registry.add(name, registry[name])
    assert list(registry) and len(registry) == len(set(registry))


def test_one_default_method_for_the_library_a_run_and_a_sweep(tmp_path):
    from ipg.driver.sweep import load_spec

    assert AttributionConfig().method == load_config(None, []).attribution.method == DEFAULT == "component"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "models": ["organism"], "signals": ["accuracy"], "layers": [1]}))
    assert load_spec(str(spec)).methods == [DEFAULT]


def test_traits_replace_name_tests():
    assert [m for m in METHODS if METHODS[m].integrates] == ["ipg"]
    assert [m for m in METHODS if METHODS[m].per_component] == ["component"]
    assert METHODS["component"].candidates_from == "pg" and METHODS["pg"].candidates_from is None
    assert schedule("uniform", 4, "pg") == schedule("geometric", 9, "component") == [(1.0, 1.0)]
    assert (
        not AttributionConfig(method="pg", resample=True).resamples
        and AttributionConfig(method="ipg", resample=True).resamples
    )
    assert {"sae"} == set(CONTROL_METHODS) - set(ACCURACY_BASELINES)


@pytest.mark.parametrize(
    "flag, registry",
    [
        ("attribution.method", METHODS),
        ("attribution.schedule", SCHEDULES),
        ("attribution.baseline", BASELINES),
        ("attribution.advantage", ADVANTAGES),
        ("ray.rollout_backend", ROLLOUT_BACKENDS),
        ("ray.gradient_backend", GRADIENT_BACKENDS),
        ("length.intervention", INTERVENTIONS),
    ],
)
def test_validation_and_help_name_the_registered_choices(flag, registry):
    with pytest.raises(
        InputError,
        match=rf"{flag}: (unknown|got) 'nope'; (use|must be) one of \[{', '.join(repr(n) for n in registry)}\]",
    ):
        load_config(None, [f"--{flag}=nope"])
    epilog = build_parser()._subparsers._group_actions[0].choices["run"].epilog
    assert f"--{flag}" in epilog and " | ".join(registry) in epilog


def test_the_readme_names_every_method_schedule_baseline_and_advantage():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    settings = readme.split("Settings (all keyword arguments of `attribute`")[1].split("## ")[0]
    for registry in (METHODS, SCHEDULES, BASELINES, ADVANTAGES):
        assert all(name in settings for name in registry), registry.what
    assert all(f"`{name}`" in readme.split("## Steering")[1].split("\n## ")[0] for name in INTERVENTIONS)
