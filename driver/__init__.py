"""The single controller: CLI, config, Ray pipeline, experiment runner, report.

Python API on Ray (names resolved lazily: ``import ipg.driver`` imports no Ray):

    from ipg.driver import attribute_on_ray, RaySession
    res = attribute_on_ray("organism", examples, layers=[1, 2], q=10, out_dir="runs/x")   # local cluster
    res.table      # the same table as ipg.attribute with the same settings
"""

from ipg.lazy import lazy_exports

_EXPORTS = {
    "attribute_on_ray": "ipg.driver.orchestration.pipeline",
    "RaySession": "ipg.driver.orchestration.pipeline",
    "RayConfig": "ipg.driver.config",
    "load_config": "ipg.driver.config",
    "run_experiment": "ipg.driver.experiment",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
