"""The settings of one attribution (``AttributionConfig``), validated on construction: every error names
its field."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ipg.advantages import ADVANTAGES
from ipg.components import KINDS, POSITIONS
from ipg.errors import InputError
from ipg.generation import SamplingParams
from ipg.methods import DEFAULT as DEFAULT_METHOD
from ipg.methods import METHODS, Method
from ipg.paths import BASELINES, SCHEDULES, schedule

AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class AttributionConfig:
    """Settings of one attribution; validated on construction (errors name the field)."""

    layers: tuple[int, ...] = (1,)
    kind: str = "residual"
    n_samples: int = 5
    q: int = 10
    schedule: str = "uniform"
    baseline: str = "zero"
    advantage: str = "grpo"
    method: str = DEFAULT_METHOD  # one of ipg.methods.METHODS: component (the default), ipg (the paper's), pg
    candidates: int = 32  # method 'component': PG's top this-many components per site are re-scored
    resample: bool = False
    positions: str = "generated"
    # the rollouts' sampling: the sampler's own defaults (ipg.generation.SamplingParams)
    temperature: float = SamplingParams.temperature
    top_p: float = SamplingParams.top_p
    max_new_tokens: int = SamplingParams.max_new_tokens
    seed: int = 0
    policy_temperature: float = 1.0  # log pi of the gradient: the model's own policy (the paper's)
    batch_tokens: int = 0  # micro-batch budget: rows x padded length per forward/backward; 0: by device (see budget)
    generation_batch_size: int = 64
    autocast: str = "off"  # gradient pass in 'bf16'/'fp16' autocast (GPU speed; scores differ by the precision)
    checkpoint: bool = False  # activation checkpointing of the blocks above the site (long trajectories, less memory)
    share_prefix: bool = True  # positions 'generated': the prompt's keys/values run once per prompt, not once per row
    completeness: bool = True
    on_error: str = "fail"  # an example whose signal fails: 'fail' the run naming it, or 'skip' it and count it

    def __post_init__(self):
        checks = [
            ("kind", self.kind in KINDS, f"one of {list(KINDS)}"),
            ("schedule", self.schedule in SCHEDULES, f"one of {list(SCHEDULES)}"),
            ("baseline", self.baseline in BASELINES, f"one of {list(BASELINES)}"),
            ("advantage", self.advantage in ADVANTAGES, f"one of {list(ADVANTAGES)}"),
            ("method", self.method in METHODS, f"one of {list(METHODS)}"),
            ("candidates", isinstance(self.candidates, int) and self.candidates >= 1, "an integer >= 1"),
            ("positions", self.positions in POSITIONS, f"one of {list(POSITIONS)}"),
            ("n_samples", self.n_samples >= 1, "an integer >= 1"),
            ("q", self.q >= 1, "an integer >= 1"),
            (
                "layers",
                len(self.layers) > 0 and len(set(self.layers)) == len(self.layers),
                "a non-empty list of distinct layer indices",
            ),
            ("policy_temperature", self.policy_temperature > 0, "> 0"),
            (
                "batch_tokens",
                isinstance(self.batch_tokens, int) and self.batch_tokens >= 0,
                "an integer >= 1, or 0 to size it by device (CPU 2048, GPU 8192)",
            ),
            ("on_error", self.on_error in ("fail", "skip"), "'fail' or 'skip'"),
            ("autocast", self.autocast in AUTOCAST_DTYPES, f"one of {list(AUTOCAST_DTYPES)}"),
            ("checkpoint", isinstance(self.checkpoint, bool), "true or false"),
            ("share_prefix", isinstance(self.share_prefix, bool), "true or false"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise InputError(f"{name}: got {getattr(self, name)!r}; must be {want}")
        self.sampling()  # validates temperature, top_p, max_new_tokens

    def sampling(self, seed: int | None = None) -> SamplingParams:
        return SamplingParams(
            n=self.n_samples,
            greedy=False,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed if seed is None else seed,
        )

    def budget(self, device) -> int:
        """Micro-batch budget in padded tokens: ``batch_tokens``, or by device when it is 0. On CPU a
        micro-batch's activations should stay near the caches: measured on 2 cores, the organism's
        gradient pass takes 6.7 s at 2048 and 8.9 s at 8192 (two processes at once: 4.0 vs 5.1 s), a
        24-layer hidden-512 model the same time at both; GPUs want bigger batches."""
        if self.batch_tokens:
            return self.batch_tokens
        return 2048 if torch.device(device).type == "cpu" else 8192

    @property
    def path(self) -> Method:
        """The attribution method's traits (``ipg.methods``)."""
        return METHODS[self.method]

    @property
    def resamples(self) -> bool:
        """Fresh rollouts at each alpha: ``resample`` on a method that walks the path."""
        return self.resample and self.path.integrates

    @property
    def alphas(self) -> list[tuple[float, float]]:
        return schedule(self.schedule, self.q, self.method)
