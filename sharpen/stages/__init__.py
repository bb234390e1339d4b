"""The stages: one module per job (bon, sft, dpo/xpo, eval, theory), each a function with numbered steps.

Stages are peers: none imports another. What two stages share lives a layer down (`generation`, `metrics`,
`rows`, `runs`, `train`, the engine); a stage writes its files into its run directory and calls its report
(`sharpen.report`), which reads them.
"""
