"""An independent exact reference for IPG: a model small enough to enumerate every trajectory.

J(beta) = sum over all trajectories tau of pi_beta(tau) R(tau), where the site's components at the decision
positions are gated per component: x_t = b + beta * (h_t - b). Autograd gives dJ/dbeta exactly, so the
exact integrated gradient along beta = alpha * 1 is sum_k w_k dJ/dbeta(alpha_k). This code shares nothing
with ipg.attribution (own hooks, own teacher forcing, no sampling).
"""

import itertools

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

VOCAB = {"<|pad|>": 0, "<|endoftext|>": 1, "a": 2, "b": 3, "c": 4}
PROMPT = "ab"
MAX_NEW = 3


def tiny_enumerable_model(seed: int = 0, hidden: int = 16, layers: int = 2):
    tok = Qwen2Tokenizer(
        vocab=VOCAB, merges=[], unk_token="<|pad|>", eos_token="<|endoftext|>", pad_token="<|pad|>", padding_side="left"
    )
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        initializer_range=0.6,
        tie_word_embeddings=False,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = Qwen2ForCausalLM(cfg).eval().to(torch.float64)
    model.requires_grad_(False)
    return model, tok


def reward(text: str) -> float:
    return text.count("a") + 0.5 * text.count("c") - 0.25 * len(text)


def trajectories():
    """Every completion of at most MAX_NEW tokens; EOS (id 1) ends one early."""
    out = []
    for n in range(1, MAX_NEW + 1):
        for seq in itertools.product(range(len(VOCAB)), repeat=n):
            if 1 in seq[:-1]:
                continue  # EOS only as the last token
            if n < MAX_NEW and seq[-1] != 1:
                continue  # shorter than MAX_NEW only when EOS ended it
            out.append(list(seq))
    return out


def trajectory_logprobs(model, tok, layer: int, kind: str, beta: torch.Tensor, baseline: torch.Tensor | None = None):
    """log pi_beta(tau) of every trajectory (with autograd to beta) and its reward: all trajectories in one
    right-padded batch (causal attention: padding after a trajectory cannot change it)."""
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    L = len(prompt)
    seqs = trajectories()
    width = L + MAX_NEW
    ids = torch.tensor([prompt + s + [0] * (MAX_NEW - len(s)) for s in seqs])  # (S, width)
    on_path = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        on_path[i, L - 1 : L + len(s) - 1] = True  # decision positions

    def gate(h):
        b = torch.zeros_like(h[0, 0]) if baseline is None else baseline.to(h.dtype)
        return torch.where(on_path[..., None], b + beta * (h - b), h)

    block = model.model.layers[layer]
    if kind == "residual":
        handle = block.register_forward_hook(lambda m, a, out: gate(out))
    else:
        handle = block.mlp.down_proj.register_forward_pre_hook(lambda m, a: (gate(a[0]),))
    try:
        logp = torch.log_softmax(model(ids).logits.double(), -1)  # (S, width, V)
    finally:
        handle.remove()
    lps = torch.stack([sum(logp[i, L - 1 + t, tok_id] for t, tok_id in enumerate(s)) for i, s in enumerate(seqs)])
    rewards = torch.tensor(
        [reward(tok.decode([t for t in s if t != 1], skip_special_tokens=True)) for s in seqs], dtype=torch.float64
    )
    return lps, rewards


def exact_J(model, tok, layer: int, kind: str, beta: torch.Tensor, baseline: torch.Tensor | None = None):
    """J(beta) = sum_tau pi_beta(tau) R(tau) (a scalar with autograd to beta), by enumeration."""
    lps, rewards = trajectory_logprobs(model, tok, layer, kind, beta, baseline)
    return (lps.exp() * rewards).sum()


def exact_surrogate(model, tok, layer: int, kind: str, beta: torch.Tensor, width: int) -> torch.Tensor:
    """f(beta) = E_{tau ~ pi_1}[(R - J(1)) log pi_beta(tau)]: the policy-gradient surrogate with the
    trajectories drawn once from the unmodified model (what IPG and the component path differentiate)."""
    with torch.no_grad():
        lp1, rewards = trajectory_logprobs(model, tok, layer, kind, torch.ones(width, dtype=torch.float64))
        p1 = lp1.exp()
        weights = p1 * (rewards - (p1 * rewards).sum())
    lps, _ = trajectory_logprobs(model, tok, layer, kind, beta)
    return (weights * lps).sum()


def exact_gradient(model, tok, layer, kind, alpha: float, width: int, baseline=None) -> torch.Tensor:
    beta = torch.full((width,), float(alpha), dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(exact_J(model, tok, layer, kind, beta, baseline), beta)
    return g


def exact_ipg(model, tok, layer, kind, alphas, width, baseline=None) -> torch.Tensor:
    """sum_k w_k dJ/dbeta(alpha_k): the exact value of the schedule's quadrature."""
    return sum(w * exact_gradient(model, tok, layer, kind, a, width, baseline) for a, w in alphas)


def weighted_rollouts(
    model, tok, layer: int, kind: str, alpha: float, width: int, baseline=None, center: float = 0.0
) -> list:
    """Every trajectory at once, as one prompt's group of samples of ``ipg.attribution``, weighted instead of
    drawn: the advantage of trajectory tau is N pi_alpha(tau) R(tau) (N trajectories), so the group's mean of
    A grad log pi, which the gradient pass computes, is sum_tau pi_alpha(tau) R(tau) grad log pi(tau): the
    exact expectation, with no sampling error. ``center`` is subtracted from R first. Log-probs are those of the
    site at ``alpha`` on the path."""
    from ipg.generation import Sample
    from ipg.rollouts import Rollout

    with torch.no_grad():
        lps, rewards = trajectory_logprobs(
            model, tok, layer, kind, torch.full((width,), float(alpha), dtype=torch.float64), baseline
        )
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    seqs, n = trajectories(), len(lps)
    samples = [
        Sample("p", i, prompt, s, tok.decode([t for t in s if t != 1], skip_special_tokens=True), finished=s[-1] == 1)
        for i, s in enumerate(seqs)
    ]
    weights = (n * lps.exp() * (rewards - center)).tolist()
    return [Rollout({"id": "p", "prompt": PROMPT, "prompt_ids": prompt}, samples, rewards.tolist(), weights)]
