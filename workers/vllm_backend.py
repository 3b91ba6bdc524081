"""The vLLM rollout backend: sampling and steered generation inside a vLLM engine.

vLLM is imported here and nowhere else. The engine returns the same ``Sample`` records as
``ipg.generation.generate``: prompt ids from our tokenizer, completion ids ending with EOS when
finished, per-token log-probabilities of the raw model distribution (vLLM's ``raw_logprobs``: the
same definition as the HF backend), and text decoded by our tokenizer.

Sampling: one request per (example, sample index) seeded with ``ipg.generation.sample_seed``, so a
sample does not depend on batching or sharding (the samples differ from the HF backend's: another
random stream, same distribution).

Whole prefills on CPU: a prompt split across engine steps makes vLLM rewind that request's random
generator, which CPU generators cannot do (see ``workers.vllm_sizing.whole_prefills``).

Steering inside the engine: forward hooks installed on the engine's model by a method of ours that the
engine's workers carry (``SteeringExtension``, vLLM's ``worker_extension_cls``), called by name through
``LLM.collective_rpc`` with plain data: lists of numbers, strings and the SAE's file path. No function
or module is pickled into the engine, so vLLM's insecure (pickle) serialization stays off. Eager mode,
prefix caching off. vLLM's decoder layers return
``(hidden, residual)`` with the residual add fused into the next norm; a hook edits the block output
``hidden + residual`` and hands ``(edited, 0)`` on, which the next fused add turns back into exactly
``edited``. The decision positions (``positions="generated"``) are the last query token of every
request in the step (``query_start_loc[1:] - 1``): the last prompt token at prefill, the new token at
decode, as in the HF backend. MLP neurons are the input of ``mlp.down_proj``, attention coordinates the
input of ``self_attn.o_proj`` (under tensor parallelism each rank holds a slice of either; indices are
mapped to the rank's slice).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from ipg.components import PROJECTIONS, ComponentId, Site
from ipg.errors import InputError
from ipg.generation import Sample, SamplingParams, sample_seed
from ipg.interventions import DEFAULT as DEFAULT_INTERVENTION
from ipg.prompts import prompt_ids

VARIANT_KEY = "ipg_variant"  # a request's steering variant, in its SamplingParams.extra_args


class VLLMEngine:
    """A vLLM engine for one model. Memory is decided before it starts (``workers.vllm_sizing``): on CPU
    the KV cache is sized from the weights, ``max_model_len`` and ``max_num_seqs`` (or ``kv_cache_gib``);
    on GPU vLLM takes ``gpu_memory_utilization`` of the device (default 0.9 of the actor's GPU share)."""

    def __init__(self, model: str, *, dtype: str = "float32", seed: int = 0, enforce_eager: bool = True,
                 enable_prefix_caching: bool = False, trust_remote_code: bool = False, **sizing):  # fmt: skip
        """``sizing``: the memory settings ``workers.vllm_sizing.plan`` takes (tensor_parallel_size,
        max_model_len, max_num_seqs, kv_cache_gib, gpu_memory_utilization, gpu_share); it checks them."""
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        # per-request steering reads the V1 model runner's input batch (install_row_hooks); V1 is what CPU builds run
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        from transformers import AutoTokenizer
        from vllm import LLM

        from ipg.models import resolve_model_path
        from ipg.workers.vllm_sizing import plan

        path = resolve_model_path(model)
        memory = plan(path, dtype=dtype, cuda=torch.cuda.is_available(), trust_remote_code=trust_remote_code, **sizing)
        self.memory = memory.summary  # the line a run logs about this engine
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        args = {k: v for k, v in memory.args.items() if v is not None}
        self.llm = LLM(
            model=path,
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=sizing.get("tensor_parallel_size", 1),
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            trust_remote_code=trust_remote_code,
            worker_extension_cls=f"{__name__}.SteeringExtension",
            **args,
        )
        self.max_model_len = self.llm.model_config.max_model_len
        self.enforce_eager = enforce_eager

    def close(self) -> None:
        """Stop the engine's worker processes and free their memory (the KV cache with them)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            self.llm = None

    def generate(self, examples: list[dict], params: SamplingParams) -> list[list[Sample]]:
        """``params.n`` samples per example, in input order (the HF backend's records)."""
        return self._run([examples], params)[0]

    def generate_packed(
        self, jobs: list, params: SamplingParams, positions: str = "generated", saes: dict | None = None
    ) -> list[list[list[Sample]]]:
        """Every job's samples (``ipg.packing.Job``: examples under a steering variant) from one engine
        run: each request carries its job's number, and the hooks steer every request of a step by its
        own variant (``install_row_hooks``). Sampled draws are seeded per (seed, example id, sample
        index), so a job's samples are those of a pass of its own."""
        from ipg.packing import check_jobs

        check_jobs(jobs)
        variants = [row_variant(job.steering, saes) for job in jobs]
        if not any(v is not None for v in variants):
            return self._run([job.examples for job in jobs], params)
        if not self.enforce_eager:
            raise InputError("vllm.enforce_eager: steering hooks need eager mode; set it to true")
        self.llm.collective_rpc("ipg_install_row_hooks", args=(variants, positions))
        try:
            return self._run([job.examples for job in jobs], params)
        finally:
            self.llm.collective_rpc("ipg_remove_hooks")

    def _run(self, groups: list[list[dict]], params: SamplingParams) -> list[list[list[Sample]]]:
        """One engine run over every group's examples, requests tagged with their group's number."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        tok = self.tokenizer
        eos = tok.eos_token_id
        prompts, sampling, keys = [], [], []
        for g, examples in enumerate(groups):
            ids = [ex["id"] for ex in examples]
            if len(set(ids)) != len(ids):
                raise InputError("examples: duplicate ids; samples are keyed and seeded by id, so ids must be unique")
            for ex in examples:
                pid = prompt_ids(tok, ex)  # the ids the HF backend and the gradient pass see
                if len(pid) + params.max_new_tokens > self.max_model_len:
                    raise InputError(
                        f"ray.vllm.max_model_len: example '{ex['id']}' has {len(pid)} prompt tokens, and with "
                        f"{params.max_new_tokens} new tokens needs {len(pid) + params.max_new_tokens}; the engine "
                        f"holds {self.max_model_len}. Raise ray.vllm.max_model_len or leave it unset (sized from the run)"
                    )
                for j in range(params.n):
                    prompts.append(TokensPrompt(prompt_token_ids=pid))
                    sampling.append(
                        VSamplingParams(
                            n=1,
                            temperature=0.0 if params.greedy else params.temperature,
                            top_p=1.0 if params.greedy else params.top_p,
                            max_tokens=params.max_new_tokens,
                            seed=None if params.greedy else sample_seed(params.seed, ex["id"], j),
                            logprobs=0,
                            stop_token_ids=[eos] if eos is not None else None,
                            detokenize=False,
                            extra_args={VARIANT_KEY: g},
                        )
                    )
                    keys.append((g, ex["id"], j, pid))
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        by_key = {}
        for (g, eid, j, pid), out in zip(keys, outputs):
            c = out.outputs[0]
            toks = list(c.token_ids)
            lps = [float(step[t].logprob) for t, step in zip(toks, c.logprobs or [])]
            text = tok.decode([t for t in toks if t != eos], skip_special_tokens=True)
            by_key[(g, eid, j)] = Sample(eid, j, list(pid), toks, text, lps, bool(toks) and toks[-1] == eos)
        return [
            [[by_key[(g, ex["id"], j)] for j in range(params.n)] for ex in examples]
            for g, examples in enumerate(groups)
        ]

    @contextmanager
    def edits(self, specs: list[dict]):
        """Hooks on the engine's model while the body runs (removed on exit, also on errors).
        A spec: {"layer", "kind", "positions", "op": "scale", "indices", "gamma"} or
        {..., "op": "interpolate", "alpha", "baseline"}; SAE sites carry the SAE module in "sae"."""
        if specs and not self.enforce_eager:
            raise InputError("vllm.enforce_eager: steering hooks need eager mode; set it to true")
        self.llm.collective_rpc("ipg_install_hooks", args=([_plain(s) for s in specs],))
        try:
            yield
        finally:
            self.llm.collective_rpc("ipg_remove_hooks")

    def interpolate(self, site: Site, alpha: float, baseline: torch.Tensor, positions: str, saes: dict | None = None):
        """The site on the IPG path at ``alpha`` (baseline + alpha (h - baseline)) while the body runs."""
        return self.edits([interpolation_spec(site, alpha, baseline, positions, saes)])

    def add(self, layer: int, vector: torch.Tensor, coefficient: float, positions: str = "generated"):
        """Add ``coefficient * vector`` to block ``layer``'s output while the body runs (control vectors)."""
        return self.edits(
            [
                dict(
                    layer=layer,
                    kind="residual",
                    positions=positions,
                    op="add",
                    vector=vector.detach().float().cpu(),
                    coefficient=float(coefficient),
                    sae=None,
                )
            ]
        )

    def scale(self, components, gamma: float, positions: str = "generated", saes: dict | None = None):
        """Steering: the selected components times gamma while the body runs."""
        return self.edits(steering_specs(components, gamma, positions, saes))


def steering_specs(components, gamma: float, positions: str, saes: dict | None = None) -> list[dict]:
    """Specs scaling ``components`` (ComponentIds) by gamma, one per site."""
    from ipg.steering import by_site

    return [
        dict(
            layer=site.layer,
            kind=site.kind,
            positions=positions,
            op="scale",
            indices=sorted(set(idx)),
            gamma=float(gamma),
            sae=_sae_state(saes, site),
        )
        for site, idx in by_site(components).items()
    ]


def row_variant(steering: dict | None, saes: dict | None = None) -> dict | None:
    """A steering variant (None, {"scale": components, "gamma"[, "intervention", "centre"]}, {"add": layer,
    "vector", "coefficient"}) as plain data for the engine: component ids as strings, the vector and the
    centres as lists, and the SAE file of every SAE site it scales (``saes``: layer -> path)."""
    if steering is None:
        return None
    if "scale" in steering:
        comps = [ComponentId.parse(c) if isinstance(c, str) else c for c in steering["scale"]]
        files = {str(c.layer): _sae_state(saes, c.site) for c in comps if c.kind == "sae"}
        centre = steering.get("centre")
        return {
            "scale": [str(c) for c in comps],
            "gamma": float(steering["gamma"]),
            "saes": files,
            "intervention": steering.get("intervention", DEFAULT_INTERVENTION),
            "centre": None if centre is None else [float(x) for x in centre],
        }
    vector = steering["vector"]
    return {
        "add": int(steering["add"]),
        "vector": vector.tolist() if isinstance(vector, torch.Tensor) else list(vector),
        "coefficient": float(steering["coefficient"]),
    }


def interpolation_spec(
    site: Site, alpha: float, baseline: torch.Tensor, positions: str, saes: dict | None = None
) -> dict:
    return dict(
        layer=site.layer,
        kind=site.kind,
        positions=positions,
        op="interpolate",
        alpha=float(alpha),
        baseline=baseline.detach().float().cpu(),
        sae=_sae_state(saes, site),
    )


def _sae_state(saes, site: Site):
    if site.kind != "sae":
        return None
    sae = (saes or {}).get(site.layer)
    if sae is None:
        raise InputError(f"sae: steering layers.{site.layer}.sae needs an SAE for layer {site.layer}")
    source = getattr(sae, "source", None)
    if source is None:
        raise InputError(
            f"sae: the SAE of layer {site.layer} was not loaded from a file (SAE.load); the vLLM engine "
            "loads SAEs from their files, so save it first"
        )
    return source


def _plain(spec: dict) -> dict:
    """A spec as data vLLM's RPC carries without pickling: tensors as lists of floats."""
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in spec.items()}


class SteeringExtension:
    """Mixed into the vLLM worker (``worker_extension_cls``): the hook RPCs, by name, with plain data."""

    def ipg_install_hooks(self, specs: list[dict]) -> int:
        return install_hooks(self.get_model(), [_tensors(s) for s in specs])

    def ipg_install_row_hooks(self, variants: list[dict | None], positions: str) -> int:
        return install_row_hooks(self.get_model(), self.model_runner, variants, positions)

    def ipg_remove_hooks(self) -> int:
        return remove_hooks(self.get_model())


_SAES: dict = {}


def _tensors(spec: dict) -> dict:
    """Inside the worker: the spec's lists as float32 tensors, its SAE loaded (once per file)."""
    out = {k: torch.tensor(spec[k], dtype=torch.float32) if k in ("baseline", "vector") else v for k, v in spec.items()}
    if out.get("sae") is not None:
        out["sae"] = _load_sae(out["sae"])
    return out


# -- inside the vLLM worker process ----------------------------------------------------------------


def _query_starts() -> torch.Tensor | None:
    """This step's ``query_start_loc`` (each request's first row in the flattened token batch, and the
    total); None in steps without requests (profiling)."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return None
    md = get_forward_context().attn_metadata
    if isinstance(md, list):
        md = md[0] if md else None
    if not md:
        return None
    return getattr(next(iter(md.values())), "query_start_loc", None)


def _edit_rows(full: torch.Tensor, rows, sae, edit) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder layer's (hidden, residual) output with the residual stream's ``rows`` edited: ``edit`` acts on
    them, or with an SAE on their features, its reconstruction error kept. The edited stream is returned as the
    hidden state with a zero residual, which the next layer's fused norm adds back."""
    h = full[rows]
    if sae is None:
        new = edit(h)
    else:
        f = sae.encode(h.float())
        new = h + sae.decode_delta(edit(f) - f).to(h.dtype)
    edited = full.clone()
    edited[rows] = new.to(full.dtype)
    return edited, torch.zeros_like(full)


def _decision_rows(n_tokens: int, positions: str, device) -> torch.Tensor | None:
    """Rows of this step's flattened token batch to edit; None in steps without requests (profiling)."""
    if positions == "all":
        return torch.arange(n_tokens, device=device)
    qsl = _query_starts()
    if qsl is None:
        return None
    return (qsl[1:] - 1).to(device=device, dtype=torch.long)


def _component_fn(spec: dict, device, dtype, lo: int = 0, hi: int | None = None):
    """The edit in component space: x (rows, width) -> x'. ``lo:hi`` is this rank's slice of a projection's input (TP)."""
    if spec["op"] == "scale":
        idx = torch.tensor(
            [i - lo for i in spec["indices"] if lo <= i < (hi if hi is not None else 1 << 62)],
            dtype=torch.long,
            device=device,
        )
        gamma = spec["gamma"]

        def fn(x):
            out = x.clone()
            out[:, idx] = x[:, idx] * gamma
            return out
    elif spec["op"] == "add":
        v = (spec["coefficient"] * spec["vector"]).to(device=device, dtype=dtype)

        def fn(x):
            return x + v
    else:
        b = spec["baseline"][lo:hi].to(device=device, dtype=dtype)
        alpha = spec["alpha"]

        def fn(x):
            return b + alpha * (x - b)

    return fn


def _projection(block, kind: str):
    """(the block's projection whose input is a ``kind`` site, the slice of that input this rank holds): a
    row-parallel projection splits its input across tensor-parallel ranks."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    parent, name = PROJECTIONS[kind]
    module = getattr(getattr(block, parent), name)
    width = module.input_size_per_partition if hasattr(module, "input_size_per_partition") else module.weight.shape[1]
    rank = get_tensor_model_parallel_rank() if get_tensor_model_parallel_world_size() > 1 else 0
    return module, slice(rank * width, (rank + 1) * width)


def install_hooks(model, specs: list[dict]) -> int:
    remove_hooks(model)
    handles = []
    layers = model.model.layers
    for spec in specs:
        block = layers[spec["layer"]]
        if spec["kind"] in PROJECTIONS:
            proj, part = _projection(block, spec["kind"])
            param = next(proj.parameters())
            fn = _component_fn(spec, param.device, param.dtype, part.start, part.stop)

            def pre_hook(module, args, fn=fn, positions=spec["positions"]):
                x = args[0]
                rows = _decision_rows(x.shape[0], positions, x.device)
                if rows is None:
                    return None
                out = x.clone()
                out[rows] = fn(x[rows]).to(x.dtype)
                return (out, *args[1:])

            handles.append(proj.register_forward_pre_hook(pre_hook))
            continue
        sae = spec["sae"]
        param = next(block.parameters())
        if sae is not None:
            sae = sae.to(param.device)
        fn = _component_fn(spec, param.device, torch.float32 if sae is not None else param.dtype)

        def hook(module, args, output, fn=fn, sae=sae, positions=spec["positions"]):
            hidden, residual = output
            full = hidden + residual if residual is not None else hidden
            rows = _decision_rows(full.shape[0], positions, full.device)
            if rows is None:
                return None
            return _edit_rows(full, rows, sae, fn)

        handles.append(block.register_forward_hook(hook))
    model._ipg_hooks = handles
    return len(handles)


def _load_sae(path: str):
    from ipg.sae import SAE

    if path not in _SAES:
        _SAES[path] = SAE.load(path)
    return _SAES[path]


def _step_variants(runner, n_requests: int, device) -> torch.Tensor:
    """The variant of each request of this step, in the step's request order (the model runner's input
    batch, which orders the flattened tokens and ``query_start_loc``); -1 for an untagged request."""
    req_ids = getattr(getattr(runner, "input_batch", None), "req_ids", None)
    if req_ids is None:
        raise RuntimeError(
            "per-request steering reads vLLM's V1 model runner (input_batch.req_ids); this engine runs "
            "another one: set VLLM_USE_V2_MODEL_RUNNER=0"
        )
    tags = []
    for rid in req_ids[:n_requests]:
        extra = runner.requests[rid].sampling_params.extra_args or {}
        tags.append(int(extra.get(VARIANT_KEY, -1)))
    return torch.tensor(tags, dtype=torch.long, device=device)


def _step_rows(n_tokens: int, positions: str, runner, device):
    """(rows of the flattened token batch to edit, each row's variant); None in steps without requests."""
    qsl = _query_starts()
    if qsl is None:
        return None
    qsl = qsl.to(device=device, dtype=torch.long)
    variants = _step_variants(runner, qsl.shape[0] - 1, device)
    if positions == "all":
        return torch.arange(n_tokens, device=device), variants.repeat_interleave(qsl[1:] - qsl[:-1])
    return qsl[1:] - 1, variants


def install_row_hooks(model, runner, variants: list[dict | None], positions: str) -> int:
    """Hooks steering each request by its variant: per site, the variants' tables (``ipg.steering``), with a
    last identity row for untagged requests, gathered by each edited row's variant."""
    from ipg.steering import apply_rows, variant_sites, variant_tables

    remove_hooks(model)
    variants = list(variants) + [None]  # index -1: untagged
    layers = model.model.layers
    saes = {}
    for v in variants:
        for layer, path in ((v or {}).get("saes") or {}).items():
            saes[int(layer)] = _load_sae(path)
    widths, slices = {}, {}
    for site in variant_sites(variants):
        if site.kind == "residual":
            widths[site] = runner.model_config.get_hidden_size()
        elif site.kind == "sae":
            widths[site] = saes[site.layer].n_features
        else:
            from vllm.distributed import get_tensor_model_parallel_world_size

            _, part = _projection(layers[site.layer], site.kind)
            widths[site], slices[site] = (part.stop - part.start) * get_tensor_model_parallel_world_size(), part
    handles = []
    for site, table in variant_tables(variants, widths).items():
        block = layers[site.layer]
        param = next(block.parameters())
        table = {k: t[:, slices[site]] if site in slices else t for k, t in table.items()}
        table = {k: t.to(param.device) for k, t in table.items()}
        if site.kind in PROJECTIONS:

            def pre_hook(module, args, table=table):
                x = args[0]
                found = _step_rows(x.shape[0], positions, runner, x.device)
                if found is None:
                    return None
                rows, variant = found
                out = x.clone()
                out[rows] = apply_rows(x[rows], table, variant)
                return (out, *args[1:])

            handles.append(_projection(block, site.kind)[0].register_forward_pre_hook(pre_hook))
            continue
        sae = saes[site.layer].to(param.device) if site.kind == "sae" else None

        def hook(module, args, output, table=table, sae=sae):
            hidden, residual = output
            full = hidden + residual if residual is not None else hidden
            found = _step_rows(full.shape[0], positions, runner, full.device)
            if found is None:
                return None
            rows, variant = found
            return _edit_rows(full, rows, sae, lambda x: apply_rows(x, table, variant))

        handles.append(block.register_forward_hook(hook))
    model._ipg_hooks = handles
    return len(handles)


def remove_hooks(model) -> int:
    handles = getattr(model, "_ipg_hooks", [])
    for h in handles:
        h.remove()
    model._ipg_hooks = []
    return len(handles)
