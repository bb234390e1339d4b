"""The report layer: reads run directories, writes report.md and PNG plots. One kit of tables and figures
(`kit`) and one module per stage's report.

May import: `runs`, `metrics`, `selection`, `rows`, `errors` and `kit`; never torch at import (matplotlib
inside functions), so `sharpen report DIR` works on a machine without torch. Reports never recompute what a
stage stored: a summary a stage needs while it runs is computed by the stage or by `metrics`.
"""
