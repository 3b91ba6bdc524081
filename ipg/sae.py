"""Sparse autoencoders over a block's residual output: TopK (Gao et al. 2024), ReLU and JumpReLU.

    f = act(W_enc (z - b_pre) + b_enc)             (..., n_features)
        topk:     ReLU of the k largest pre-activations, the rest 0
        relu:     ReLU                              (SAELens's "standard")
        jumprelu: pre-activation where it exceeds its feature's threshold, else 0
    z_hat = W_dec f + b_pre                        (..., d_model)
    error = z - z_hat                              kept when editing, so an edit of f changes only
                                                   what f explains: z' = z + W_dec (f' - f)

The project trains TopK SAEs (``train_sae``) and saves them as one safetensors file with its layer, k
and source model in the metadata (never pickles); SAEs in SAELens's directory layout load and export
through ``ipg.sae_lens``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ipg import sae_lens
from ipg.errors import InputError
from ipg.files import atomic_write_bytes

ARCHITECTURES = ("topk", "relu", "jumprelu")


class SAE(torch.nn.Module):
    def __init__(
        self,
        d_model: int,
        n_features: int,
        k: int = 0,
        layer: int = -1,
        model: str = "",
        architecture: str = "topk",
        subtract_b_pre: bool = True,
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise InputError(f"sae.architecture: one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
        if architecture == "topk" and not 0 < k <= n_features:
            raise InputError(f"sae.k: must be in 1..n_features ({n_features}), got {k}")
        self.d_model, self.n_features, self.k, self.layer, self.model = d_model, n_features, k, layer, model
        self.architecture, self.subtract_b_pre = architecture, subtract_b_pre
        self.W_enc = torch.nn.Parameter(torch.zeros(n_features, d_model))
        self.b_enc = torch.nn.Parameter(torch.zeros(n_features))
        self.W_dec = torch.nn.Parameter(torch.zeros(d_model, n_features))
        self.b_pre = torch.nn.Parameter(torch.zeros(d_model))
        if architecture == "jumprelu":
            self.threshold = torch.nn.Parameter(torch.zeros(n_features))

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d_model) -> (..., n_features); TopK: at most k non-zeros per position."""
        z = z.to(self.W_enc.dtype)
        pre = (z - self.b_pre if self.subtract_b_pre else z) @ self.W_enc.T + self.b_enc
        if self.architecture == "relu":
            return pre.relu()
        if self.architecture == "jumprelu":
            return pre * (pre > self.threshold)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec.T + self.b_pre

    def decode_delta(self, df: torch.Tensor) -> torch.Tensor:
        """W_dec df: the change of the block output for a change df of the features (no bias)."""
        return df @ self.W_dec.T

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(z))

    def save(self, path: str | Path) -> Path:
        meta = {
            "d_model": str(self.d_model),
            "n_features": str(self.n_features),
            "k": str(self.k),
            "layer": str(self.layer),
            "model": self.model,
            "format": "ipg.topk_sae.v1",
            "architecture": self.architecture,
            "subtract_b_pre": str(self.subtract_b_pre).lower(),
        }
        tensors = {n: p.detach().contiguous().cpu() for n, p in self.named_parameters()}
        tmp = Path(path).with_suffix(".safetensors.partial")
        save_file(tensors, str(tmp), metadata=meta)
        data = tmp.read_bytes()
        tmp.unlink()
        return atomic_write_bytes(path, data)

    @staticmethod
    def header(path: str | Path) -> dict:
        """The SAE's metadata (shape, layer, model, architecture) without reading its weights: an ipg file,
        or a SAELens directory (cfg.json and sae_weights.safetensors). A missing or foreign file raises
        InputError."""
        path = Path(path)
        if path.is_dir():
            return sae_lens.header(path)
        if not path.is_file():
            raise InputError(
                f"sae: file '{path}' not found; train one with `ipg sae train`, or give a SAELens "
                "directory (cfg.json, sae_weights.safetensors)"
            )
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "ipg.topk_sae.v1":
            raise InputError(
                f"sae: '{path}' is not an ipg SAE file (metadata format {meta.get('format')!r}); "
                "SAELens SAEs load from their directory"
            )
        return {"architecture": "topk", "subtract_b_pre": "true", **meta}

    @classmethod
    def load(cls, path: str | Path) -> "SAE":
        path = Path(path)
        if path.is_dir():
            args, state = sae_lens.read(path)
            sae = cls(*args)
            sae.load_state_dict(state)
        else:
            meta = cls.header(path)
            sae = cls(
                int(meta["d_model"]),
                int(meta["n_features"]),
                int(meta["k"]),
                int(meta["layer"]),
                meta.get("model", ""),
                meta["architecture"],
                meta["subtract_b_pre"] == "true",
            )
            sae.load_state_dict(load_file(str(path)))
        sae.requires_grad_(False)
        sae.source = str(path.resolve())  # where it came from: another process loads it from there
        return sae.eval()


TopKSAE = SAE  # the name under which 0.x releases exported it


def train_sae(
    activations: torch.Tensor,
    n_features: int,
    k: int,
    *,
    steps: int = 3000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    layer: int = -1,
    model: str = "",
    log=print,
) -> tuple[SAE, dict]:
    """Fit a TopK SAE to ``activations`` (N, d_model). Returns the SAE and its fit statistics
    (fraction of variance unexplained, dead features) on a held-out 10%."""
    torch.manual_seed(seed)
    n, d = activations.shape
    perm = torch.randperm(n)
    held, train = activations[perm[: n // 10]], activations[perm[n // 10 :]]
    sae = SAE(d, n_features, k, layer, model)
    with torch.no_grad():
        w = torch.randn(d, n_features)
        sae.W_dec.copy_(w / w.norm(dim=0, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_pre.copy_(train.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    start = time.perf_counter()
    for step in range(steps):
        batch = train[torch.randint(0, len(train), (batch_size,))]
        loss = (sae(batch) - batch).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # unit-norm decoder columns, as in the TopK SAE recipe
            sae.W_dec.div_(sae.W_dec.norm(dim=0, keepdim=True).clamp(min=1e-8))
        if step % 500 == 0 or step == steps - 1:
            log(f"sae step {step:5d}  mse {loss.item():.4f}  {time.perf_counter() - start:5.0f}s")
    sae.requires_grad_(False).eval()
    with torch.no_grad():
        f = sae.encode(held)
        fvu = ((sae.decode(f) - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum()).item()
        alive = (sae.encode(train[:20000]) > 0).any(0)
    stats = {
        "fvu": round(fvu, 5),
        "dead_features": int((~alive).sum()),
        "n_activations": n,
        "train_seconds": round(time.perf_counter() - start, 1),
        "steps": steps,
        "k": k,
        "n_features": n_features,
    }
    if not math.isfinite(fvu):
        raise RuntimeError(f"SAE training diverged (fvu {fvu}); lower sae.lr")
    return sae, stats


def collect_activations(
    model,
    tokenizer,
    examples: list[dict],
    layer: int,
    *,
    n_samples: int = 4,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    seed: int = 0,
    chunk: int = 32,
    skip_first: bool = False,
    log=None,
) -> torch.Tensor:
    """Block-``layer`` outputs (N, d_model) at the positions of sampled completions of the prompts;
    ``log`` gets a line per ``chunk`` prompts sampled.

    ``skip_first``: leave out each sequence's first position and repeated rows. A chat model's first
    token is an attention sink whose output can be ~100x the median norm (SmolLM2: 25000 against 300),
    and a shared system prompt repeats the same rows in every sequence; both would dominate the
    reconstruction loss and make the fraction of variance unexplained look near 0."""
    from ipg.components import Site, site_activations
    from ipg.generation import SamplingParams, generate

    params = SamplingParams(
        n=n_samples, greedy=False, temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed
    )
    sequences, start = [], time.perf_counter()
    for c in range(0, len(examples), chunk):
        groups = generate(model, tokenizer, examples[c : c + chunk], params)
        sequences += [(s.prompt_ids + s.completion_ids, len(s.prompt_ids)) for group in groups for s in group]
        if log is not None:
            done = min(c + chunk, len(examples))
            log(f"sae data: sampled {done}/{len(examples)} prompts x {n_samples}, {time.perf_counter() - start:.0f} s")
    acts = torch.cat(
        [h[1:] if skip_first else h for _, _, h in site_activations(model, Site(layer, "residual"), sequences)]
    )
    return torch.unique(acts, dim=0) if skip_first else acts  # (N, d_model)
