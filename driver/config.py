"""The run configuration: one typed tree of frozen dataclasses, loaded from YAML, overridden by dotted
flags (``--attribution.q=4``), validated once. Unknown keys and wrong types raise an InputError that
names the dotted key. Every default serves the organism on CPU.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ipg.answers import DEFAULT_FORMATS, REFERENCE_FORMATS, Extractor
from ipg.attribution import AttributionConfig
from ipg.data import check_fields
from ipg.driver.ray_config import DeepSpeedConfig, RayConfig, VLLMConfig
from ipg.driver.selections import ACCURACY_BASELINES, CONTROL_METHODS
from ipg.errors import InputError
from ipg.interventions import DEFAULT as INTERVENTION
from ipg.interventions import INTERVENTIONS
from ipg.methods import METHODS, PAPER
from ipg.prompts import PromptFormat

__all__ = [
    "DeepSpeedConfig",
    "RayConfig",
    "VLLMConfig",
    "RunConfig",
    "load_config",
]  # the Ray sections live in driver.ray_config


def _attribution_defaults() -> AttributionConfig:
    # the organism's defaults for a run; the seed is set by the runner, per entry of 'seeds'; the method is the
    # library's default (ipg.methods.DEFAULT; the others of ipg / pg / component run as baselines when listed;
    # `--preset paper` restores the paper's)
    return AttributionConfig(layers=(1, 2), completeness=False)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "organism"  # local path, .gguf file, hub id, or a named model ('organism', 'smollm2-135m-instruct')
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    saes: dict[int, str] = field(default_factory=lambda: {2: "organism:layer2"})  # layer -> SAE file


@dataclass(frozen=True)
class DataConfig:
    support: str | None = None  # JSONL, Parquet or a Hugging Face dataset directory; None: the organism's support split
    eval: str | None = None  # None: the organism's eval split
    n_support: int = 64  # prompts drawn (per seed) from the support file
    n_eval: int = 200  # first n prompts of the eval file
    n_validation: int = 64  # the next prompts: the best of several enhance gammas is chosen on them, not on eval
    fields: dict[str, str] = field(default_factory=dict)  # example key (prompt, answer, id) -> the file's column
    reference: str = "auto"  # how references are read: auto | gsm8k ('#### 72') | math (last \\boxed{}) | plain
    support_split: str | None = None  # the split of a dataset directory holding several (DatasetDict)
    eval_split: str | None = None

    def __post_init__(self):
        check_fields(self.fields, "fields")
        if self.reference not in REFERENCE_FORMATS:
            raise InputError(f"reference: '{self.reference}'; use one of {list(REFERENCE_FORMATS)}")


@dataclass(frozen=True)
class PromptConfig:
    """How an example becomes the model's input (``ipg.prompts``)."""

    format: str = (
        "auto"  # auto (chat when the tokenizer has a template, else raw) | chat | raw | a template over fields
    )
    system: str | None = None  # the chat format's system message
    user: str | None = None  # the chat format's user message, a template over fields; None: the example's prompt

    def __post_init__(self):
        self.prompt_format()

    def prompt_format(self) -> PromptFormat:
        try:
            return PromptFormat(self.format, self.system, self.user)
        except InputError as e:  # its messages say prompt.format / prompt.system; the tree adds 'prompt.'
            raise InputError(str(e).removeprefix("prompt.")) from None


@dataclass(frozen=True)
class AnswersConfig:
    """Which text of a completion is its final answer, for the accuracy signal and every evaluation."""

    formats: list[str] = field(
        default_factory=lambda: list(DEFAULT_FORMATS)
    )  # in order: hash, boxed, answer_is, last_number
    pattern: str | None = None  # a regex tried before the formats; its group (or the whole match) is the answer

    def __post_init__(self):
        self.extractor()

    def extractor(self) -> Extractor:
        try:
            return Extractor(tuple(self.formats), self.pattern)
        except InputError as e:
            raise InputError(str(e).removeprefix("answers.")) from None


@dataclass(frozen=True)
class EvaluationConfig:
    p: list[int] = field(default_factory=lambda: [8, 16])
    enhance_gammas: list[float] = field(default_factory=lambda: [1.5])
    suppress_gammas: list[float] = field(default_factory=lambda: [0.0])
    max_new_tokens: int = 128
    positions: str = "generated"
    batch_size: int = 128
    random_draws: int = 5  # random selections per seed and p: random's spread is part of every comparison
    # the evaluations of a seed run together, each row steered by its own variant: batches of the same prompts
    # stacked up to this many tokens (rows x (longest prompt + max_new_tokens)); 0: one pass per evaluation
    pack_tokens: int = 65536
    # completions kept for the report's side-by-side texts: the first k eval prompts of every evaluation of the
    # first seed (random: its first draw); the report shows 3 of them; 0 keeps none
    completions: int = 8

    def __post_init__(self):
        if self.random_draws < 1:
            raise InputError(f"random_draws: must be >= 1, got {self.random_draws}")
        if self.batch_size < 1:
            raise InputError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.pack_tokens < 0:
            raise InputError(
                f"pack_tokens: must be >= 0 (0: one generation pass per evaluation), got {self.pack_tokens}"
            )
        if self.completions < 0:
            raise InputError(
                f"completions: must be >= 0 (eval prompts whose texts the report shows; 0: none), got {self.completions}"
            )


@dataclass(frozen=True)
class BaselinesConfig:
    methods: list[str] = field(
        default_factory=lambda: [
            "ipg",
            "pg",
            "random",
            "activation",
            "concept_tokens",
            "control_vector",
            "reason_score",
        ]
    )
    concept_tokens: list[str] = field(default_factory=lambda: ["+", "="])
    reflection_words: list[str] = field(default_factory=lambda: ["wait", "check"])


@dataclass(frozen=True)
class ControlConfig:
    """Steering with another signal (length, reflection): attribute, then sweep gamma."""

    enabled: bool = True
    layers: list[int] = field(default_factory=lambda: [1, 2])
    p: int = 8
    gammas: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    signal_params: dict = field(default_factory=dict)
    # selections steered beside the run's method (driver.selections.CONTROL_METHODS): random (its own draws),
    # activation, ipg / pg / component (each attributed with this signal), sae (the run's method on SAE features)
    methods: list[str] = field(default_factory=lambda: ["random"])
    random_draws: int = 1
    # how gamma acts on every selection of the experiment, random's included (ipg.interventions): scale (h -> gamma h),
    # mean (about each component's support mean) or add (a step along it)
    intervention: str = INTERVENTION

    def __post_init__(self):
        INTERVENTIONS.get(self.intervention, "intervention")
        unknown = sorted(set(self.methods) - set(CONTROL_METHODS))
        if unknown:
            raise InputError(
                f"methods: unknown {unknown[0]!r}; a control experiment steers {', '.join(CONTROL_METHODS)}"
            )
        if self.random_draws < 1:
            raise InputError(f"random_draws: must be >= 1, got {self.random_draws}")


@dataclass(frozen=True)
class CardsConfig:
    """Component cards of the top components of the run's method (first seed, each attributed layer)."""

    enabled: bool = True
    components: int = 4  # top components per layer
    prompts: int = 4  # support prompts (with mixed groups) whose per-position terms are kept
    contexts: int = 3  # top-activating contexts per component

    def __post_init__(self):
        for name in ("components", "prompts", "contexts"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class StabilityConfig:
    enabled: bool = True
    p: int = 8  # top-p sets compared


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    answers: AnswersConfig = field(default_factory=AnswersConfig)
    signal: str = "accuracy"  # a built-in name or an import path 'package.module:function'
    signal_params: dict = field(default_factory=dict)  # the signal's parameters (accuracy also gets answers.*)
    attribution: AttributionConfig = field(default_factory=_attribution_defaults)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    length: ControlConfig = field(default_factory=ControlConfig)
    reflection: ControlConfig = field(default_factory=lambda: ControlConfig(layers=[2]))
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    cards: CardsConfig = field(default_factory=CardsConfig)
    # more selection variants, each its own attribution per seed and evaluated like the built-in methods:
    # name -> attribution settings that differ from `attribution` (baseline, schedule, q, resample, method, ...)
    variants: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: str = "runs/organism"
    ray: RayConfig = field(default_factory=RayConfig)


def _check_type(value, tp, key: str):
    """Coerce/validate a YAML value against a field type; raise naming the dotted key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _check_type(value, args[0], key)
    if origin is tuple:  # tuple[X, ...]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{key}: expected a list, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_check_type(k, kt, f"{key}.{k}"): _check_type(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp in (dict, list) and not isinstance(value, tp):  # unparameterised: signal_params, variants
        raise InputError(f"{key}: expected a {'mapping' if tp is dict else 'list'}, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise InputError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def build_section(cls, data: dict, prefix: str, base=None):
    if not isinstance(data, dict):
        raise InputError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{prefix}{unknown[0]}: unknown key; known keys here: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            default = fields[name].default_factory()  # a section starts from its own defaults
            kwargs[name] = build_section(tp, value, f"{prefix}{name}.", default)
        else:
            kwargs[name] = _check_type(value, tp, f"{prefix}{name}")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except InputError as e:  # the section's own validation: name the full dotted key
        raise InputError(f"{prefix}{e}") from None


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"{dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def _field_type(dotted: str):
    """The declared type of a dotted key of RunConfig, or None when the key is unknown."""
    cls = RunConfig
    tp = None
    for part in dotted.split("."):
        if cls is None or not dataclasses.is_dataclass(cls):
            return None
        tp = typing.get_type_hints(cls).get(part)
        cls = tp if dataclasses.is_dataclass(tp) else None
    return tp


def parse_override(dotted: str, text: str):
    """A ``--key=value`` value: YAML (numbers, lists, mappings), except that a string-typed key takes the
    text as written, so ``--prompt.format=Question: {question}`` needs no YAML quoting."""
    tp = _field_type(dotted)
    if tp in (str, str | None) and text not in ("null", "~"):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if isinstance(value, str) else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{dotted}: '{text}' is not a valid value ({str(e).splitlines()[0]})") from None


def validate(cfg: RunConfig) -> RunConfig:
    """Checks across fields that types cannot express."""
    if cfg.attribution.seed != _attribution_defaults().seed:
        raise InputError("attribution.seed: set by the runner (once per entry of 'seeds'); remove it")
    for m in cfg.baselines.methods:
        if m not in ACCURACY_BASELINES:
            raise InputError(f"baselines.methods: unknown '{m}'; use any of {list(ACCURACY_BASELINES)}")
    reserved = {"original", "ipg_sae", "pg_sae", *ACCURACY_BASELINES}
    for name, overrides in cfg.variants.items():
        if name in reserved or not str(name).replace("_", "").isalnum():
            raise InputError(
                f"variants.{name}: a variant needs its own name (letters, digits, _), not one of {sorted(reserved)}"
            )
        if not isinstance(overrides, dict):
            raise InputError(f"variants.{name}: expected a mapping of attribution settings, got {overrides!r}")
        allowed = {"baseline", "schedule", "q", "resample", "advantage", "method", "positions", "n_samples"}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise InputError(f"variants.{name}.{unknown[0]}: not a path setting; a variant may set {sorted(allowed)}")
        try:
            dataclasses.replace(cfg.attribution, **overrides)
        except InputError as e:
            raise InputError(f"variants.{name}.{e}") from None
    for key, values in (
        ("evaluation.enhance_gammas", cfg.evaluation.enhance_gammas),
        ("evaluation.suppress_gammas", cfg.evaluation.suppress_gammas),
        ("length.gammas", cfg.length.gammas),
        ("reflection.gammas", cfg.reflection.gammas),
    ):
        if any(g < 0 for g in values):
            raise InputError(f"{key}: gammas must be >= 0, got {values}")
    if any(g < 1 for g in cfg.evaluation.enhance_gammas) or any(g > 1 for g in cfg.evaluation.suppress_gammas):
        raise InputError("evaluation: enhance_gammas must be >= 1 and suppress_gammas <= 1")
    if not cfg.evaluation.p or any(p < 1 for p in cfg.evaluation.p):
        raise InputError(f"evaluation.p: a non-empty list of integers >= 1, got {cfg.evaluation.p}")
    if not cfg.seeds:
        raise InputError("seeds: give at least one seed")
    per_component = [n for n in METHODS if METHODS[n].per_component]
    component = (
        ["attribution.method"] * cfg.attribution.path.per_component
        + ["baselines.methods"] * bool(set(per_component) & set(cfg.baselines.methods))
        + [f"variants.{n}.method" for n, o in cfg.variants.items() if o.get("method") in per_component]
    )
    if component and cfg.ray.gradient_backend == "deepspeed":
        raise InputError(
            f"{component[0]}: method 'component' needs ray.gradient_backend 'torch' (its forward passes do not "
            "run on ZeRO-3 groups yet); choose pg or ipg, or the torch backend"
        )
    from ipg.signals import make_signal, signal_names

    if cfg.signal in signal_names():
        pass  # built-ins are constructed where they run (a reward model loads its weights there)
    elif ":" in cfg.signal:
        make_signal(cfg.signal, **cfg.signal_params)  # importable and constructible, before anything runs
    else:
        raise InputError(
            f"signal: unknown '{cfg.signal}'; use one of {signal_names()} or an import path 'package.module:function'"
        )
    for key, n in (("data.n_support", cfg.data.n_support), ("data.n_eval", cfg.data.n_eval)):
        if n < 1:
            raise InputError(f"{key}: must be >= 1, got {n}")
    if cfg.data.n_validation < 0:
        raise InputError(f"data.n_validation: must be >= 0, got {cfg.data.n_validation}")
    return cfg


def read_yaml(path: str | Path, field: str):
    """A YAML file's content (None for an empty file), or an InputError naming ``field`` (the flag or
    key that gave the path): the file is missing, or it is not valid YAML."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{field}: file '{path}' not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{field}: '{path}' is not valid YAML ({str(e).splitlines()[0]})") from None


# Named groups of settings applied over the config file and under the dotted overrides (--preset NAME).
PRESETS = {
    # the paper's attribution exactly: whole-vector IPG, zero baseline, right Riemann sum of q = 10, N = 5
    # samples at temperature 0.6 and top-p 0.8 scored once at alpha = 1, GRPO advantages
    "paper": {
        "attribution.method": PAPER,
        "attribution.baseline": "zero",
        "attribution.schedule": "uniform",
        "attribution.q": 10,
        "attribution.n_samples": 5,
        "attribution.temperature": 0.6,
        "attribution.top_p": 0.8,
        "attribution.resample": False,
        "attribution.advantage": "grpo",
        "attribution.positions": "generated",
        "attribution.policy_temperature": 1.0,
    },
}


def load_config(path: str | None = None, overrides: list[str] | None = None, preset: str | None = None) -> RunConfig:
    """YAML file (optional), then a named preset, then ``key.sub=value`` overrides (values parsed as YAML)
    -> validated RunConfig."""
    tree: dict = (read_yaml(path, "--config") or {}) if path else {}
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"--preset: unknown '{preset}'; use one of {sorted(PRESETS)}")
        for key, value in PRESETS[preset].items():
            _set_dotted(tree, key, value)
    set_overrides(tree, overrides or [])
    return validate(build_section(RunConfig, tree, ""))


def set_overrides(tree: dict, overrides: list[str], prefix: str = "", refusal: str = "") -> dict:
    """Apply ``--section.key=value`` items (values parsed as YAML) to a config tree in place. ``prefix``:
    only keys under it are accepted; others are refused with ``refusal`` as the reason."""
    for item in overrides:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep:
            raise InputError(f"override '{item}': expected --section.key=value")
        if not key.startswith(prefix):
            raise InputError(f"override '{item}': {refusal}")
        _set_dotted(tree, key, parse_override(key, value))
    return tree


def as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def sae_path(path: str, model: str, layer: int) -> str:
    """An SAE of ``model.saes``: 'organism:NAME' (shipped with the organism), 'MODEL:layerL' of a named real
    model (trained on first use and cached: ipg.named_saes), an ipg SAE file, or a SAELens directory."""
    from ipg.models import ORGANISM, ORGANISM_PATH
    from ipg.named_saes import is_named, named_sae_path

    if path.startswith("organism:"):
        if model != ORGANISM:
            raise InputError(
                f"model.saes.{layer}: '{path}' belongs to the organism; give SAE files for this model or {{}}"
            )
        return str(ORGANISM_PATH.parent / "saes" / f"{path.split(':', 1)[1]}.safetensors")
    if is_named(path):
        return str(named_sae_path(path, model, layer))
    if not Path(path).exists():
        raise InputError(
            f"model.saes.{layer}: SAE '{path}' not found (an ipg SAE file, a SAELens directory with "
            "cfg.json and sae_weights.safetensors, or a named SAE such as 'smollm2-135m-instruct:layer22')"
        )
    return str(Path(path).resolve())
