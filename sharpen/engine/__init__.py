"""The engine layer: load a model, sample from it, score responses under it.

Holds model loading (`models`), the toy tokenizer, the decoders and the sampling loop (`generate`), the
counter-based random streams (`sampler`) and the one token-log-prob primitive (`scoring`). `spec` names what
the engine accepts without importing torch, so options can be checked before torch loads.

May import: `sharpen.errors` and other engine modules. Knows nothing of tasks, run directories or training.
"""
