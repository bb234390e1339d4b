"""The training layer: losses (pure functions of log-prob tensors), LoRA adapters, and the one training loop.

May import: the engine (models, the scoring primitive), `config`, `runs`, `progress`, `errors`. Knows nothing of
tasks or of the stages that call it.
"""
