"""The model organism: a ~1M-parameter Qwen2 trained on multi-step addition with reflection.

``ipg.organism.checkpoint`` holds the shipped weights and tokenizer (load with ``ipg.models.load_model
("organism")``); ``task`` defines the data, ``train`` reproduces the weights, ``card`` measures and
writes the model card.
"""
