"""Names the engine accepts, importable without torch: options are checked before torch loads."""

DEFAULT_MODEL = "gemma-3-270m"
EMBEDDED = frozenset({"gemma-3-270m", "gemma3-270m", "embedded"})

# Accepted dtype names -> torch attribute names.
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}

SAMPLE_DTYPE_HELP = ("sampling compute dtype: auto (the model's on a CPU; bfloat16 on a GPU, for a float32 model "
                     "re-scored in float32; with --no-exact-logprobs, bfloat16 wherever the hardware has it "
                     "natively), float32 or bfloat16")
