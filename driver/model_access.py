"""Where an experiment's model lives: in this process, or in the Ray actors (the driver then holds none).

Both give the experiment the methods of ``workers.model_ops.ModelOps`` (generation under steering,
support rollouts, activation statistics, control vectors, path baselines, component cards, the
model's description). In process they run on the model loaded here. On Ray, generation and rollouts are split
across the rollout actors, and the rest runs in a gradient actor; the driver loads the tokenizer and
nothing else, so a model that no single process can hold still runs.
"""

from __future__ import annotations


class LocalModel:
    """The model, its tokenizer and SAEs loaded in this process."""

    def __init__(self, model, tokenizer, saes: dict, batch_size: int, log=print):
        from ipg.workers.model_ops import ModelOps

        self.ops, self.batch_size, self.log = ModelOps(model, tokenizer, saes), batch_size, log

    def generate(self, examples, params, steering=None):
        return self.ops.generate(examples, params, steering, self.batch_size)

    def generate_many(self, jobs, params, positions: str, pack_tokens: int, done=None):
        return self.ops.generate_many(jobs, params, positions, self.batch_size, pack_tokens, log=self.log, done=done)

    def __getattr__(self, name: str):
        return getattr(self.ops, name)


class RayModel:
    """The same methods, computed in a Ray session's actors."""

    def __init__(self, session, batch_size: int):
        self.session, self.batch_size = session, batch_size

    def generate(self, examples, params, steering=None):
        return self.session.steered_generate(examples, params, steering)

    def generate_many(self, jobs, params, positions: str, pack_tokens: int, done=None):
        out = self.session.steered_generate_many(jobs, params, positions, self.batch_size, pack_tokens)
        for k, samples in enumerate(out):
            if done is not None:
                done(k, samples)
        return out

    def rollouts(self, examples, cfg, signal: str, signal_params: dict):
        return self.session.rollouts(examples, cfg, signal, signal_params)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.session.model_op(name, *args)
