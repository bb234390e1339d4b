"""The engine layer: load a model, sample from it, score responses under it.

Holds model loading (`models`), the toy tokenizer, the decoders and the sampling loop (`generate`), the
counter-based random streams and per-token statistics (`sampler`), the one token-log-prob primitive
(`scoring`), and the per-sample confidence summaries of those statistics (`confidence`, numpy only). `spec` names what
the engine accepts without importing torch, so options can be checked before torch loads.

May import: `sharpen.errors` and other engine modules. Knows nothing of tasks, run directories or training.
"""
