"""Integrated Policy Gradient (arXiv 2602.02313): attribute and steer LLM reasoning, in one process.

    import ipg
    model, tokenizer = ipg.load_model("organism")
    res = ipg.attribute(model, tokenizer, examples, signal="accuracy", layers=[2])
    res.table   # pyarrow.Table, one row per component

Names are resolved lazily so that ``import ipg`` stays cheap; nothing here imports Ray, vLLM or DeepSpeed.
"""

from ipg.lazy import lazy_exports

_EXPORTS = {
    "attribute": "ipg.attribution",
    "Attribution": "ipg.attribution",
    "load_model": "ipg.models",
    "generate": "ipg.generation",
    "SamplingParams": "ipg.generation",
    "make_signal": "ipg.signals",
    "select": "ipg.scores",
    "dice": "ipg.scores",
    "write_scores": "ipg.scores",
    "SAE": "ipg.sae",
    "TopKSAE": "ipg.sae",
    "ComponentId": "ipg.components",
    "InputError": "ipg.errors",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
