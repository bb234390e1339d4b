"""The stages: one module per job (bon, sft, dpo/xpo, eval, theory), each a function with numbered steps.

Stages are peers: none imports another. What they share that knows their configs is `kit` (the bon run loop,
held-out evaluations, the base sample pool, the validation split and the greedy validation); the rest lives a
layer down (`generation`, `metrics`, `rows`, `runs`, `train`, the engine), which knows no stage config. A stage
writes its files into its run directory and calls its report (`sharpen.report`), which reads them.
"""
