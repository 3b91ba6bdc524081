"""TopK sparse autoencoder (Gao et al. 2024) over a block's residual output.

    f = ReLU(TopK(W_enc (z - b_pre) + b_enc))      (..., n_features), k non-zeros
    z_hat = W_dec f + b_pre                        (..., d_model)
    error = z - z_hat                              kept when editing, so an edit of f changes only
                                                   what f explains: z' = z + W_dec (f' - f)

Saved as safetensors with its layer, k and source model in the metadata (never pickles).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ipg.errors import InputError
from ipg.files import atomic_write_bytes


class TopKSAE(torch.nn.Module):
    def __init__(self, d_model: int, n_features: int, k: int, layer: int = -1, model: str = ""):
        super().__init__()
        if not 0 < k <= n_features:
            raise InputError(f"sae.k: must be in 1..n_features ({n_features}), got {k}")
        self.d_model, self.n_features, self.k, self.layer, self.model = d_model, n_features, k, layer, model
        self.W_enc = torch.nn.Parameter(torch.zeros(n_features, d_model))
        self.b_enc = torch.nn.Parameter(torch.zeros(n_features))
        self.W_dec = torch.nn.Parameter(torch.zeros(d_model, n_features))
        self.b_pre = torch.nn.Parameter(torch.zeros(d_model))

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d_model) -> (..., n_features) with at most k non-zeros per position."""
        pre = (z.to(self.W_enc.dtype) - self.b_pre) @ self.W_enc.T + self.b_enc
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
        meta = {"d_model": str(self.d_model), "n_features": str(self.n_features), "k": str(self.k),
                "layer": str(self.layer), "model": self.model, "format": "ipg.topk_sae.v1"}
        tensors = {n: p.detach().contiguous().cpu() for n, p in self.named_parameters()}
        tmp = Path(path).with_suffix(".safetensors.partial")
        save_file(tensors, str(tmp), metadata=meta)
        data = tmp.read_bytes()
        tmp.unlink()
        return atomic_write_bytes(path, data)

    @staticmethod
    def header(path: str | Path) -> dict:
        """The SAE file's metadata (shape, layer, model) without reading its weights; a missing or foreign
        file raises InputError."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"sae: file '{path}' not found; train one with `ipg sae train`")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "ipg.topk_sae.v1":
            raise InputError(f"sae: '{path}' is not an ipg TopK SAE (metadata format {meta.get('format')!r})")
        return meta

    @classmethod
    def load(cls, path: str | Path) -> "TopKSAE":
        meta = cls.header(path)
        sae = cls(int(meta["d_model"]), int(meta["n_features"]), int(meta["k"]), int(meta["layer"]), meta.get("model", ""))
        sae.load_state_dict(load_file(str(path)))
        sae.requires_grad_(False)
        sae.source = str(Path(path).resolve())  # where it came from: another process loads it from there
        return sae.eval()


def train_sae(activations: torch.Tensor, n_features: int, k: int, *, steps: int = 3000, batch_size: int = 1024,
              lr: float = 1e-3, seed: int = 0, layer: int = -1, model: str = "", log=print) -> tuple[TopKSAE, dict]:
    """Fit a TopK SAE to ``activations`` (N, d_model). Returns the SAE and its fit statistics
    (fraction of variance unexplained, dead features) on a held-out 10%."""
    torch.manual_seed(seed)
    n, d = activations.shape
    perm = torch.randperm(n)
    held, train = activations[perm[: n // 10]], activations[perm[n // 10 :]]
    sae = TopKSAE(d, n_features, k, layer, model)
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
        alive = (sae.encode(train[: 20000]) > 0).any(0)
    stats = {"fvu": round(fvu, 5), "dead_features": int((~alive).sum()), "n_activations": n,
             "train_seconds": round(time.perf_counter() - start, 1), "steps": steps, "k": k, "n_features": n_features}
    if not math.isfinite(fvu):
        raise RuntimeError(f"SAE training diverged (fvu {fvu}); lower sae.lr")
    return sae, stats


def collect_activations(model, tokenizer, examples: list[dict], layer: int, *, n_samples: int = 4,
                        max_new_tokens: int = 128, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Block-``layer`` outputs (N, d_model) at every position of sampled completions of the prompts."""
    from ipg.components import Site, site_activations
    from ipg.generation import SamplingParams, generate

    params = SamplingParams(n=n_samples, greedy=False, temperature=temperature, top_p=1.0,
                            max_new_tokens=max_new_tokens, seed=seed)
    sequences = [(s.prompt_ids + s.completion_ids, len(s.prompt_ids))
                 for group in generate(model, tokenizer, examples, params) for s in group]
    return torch.cat([h for _, _, h in site_activations(model, Site(layer, "residual"), sequences)])  # (N, d_model)
