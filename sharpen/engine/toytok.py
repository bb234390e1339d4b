"""A character-level tokenizer for tiny random-weight test models (no files, no network)."""

from __future__ import annotations

_SPECIAL = ["<pad>", "<bos>", "<eos>"]
_CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


class ToyTokenizer:
    """Ids 0-2 are pad/bos/eos; then one id per printable ASCII character; the rest decode to '<k>'."""
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    pad_token, bos_token, eos_token = _SPECIAL
    chat_template = None

    def __init__(self, vocab_size: int = 128) -> None:
        if vocab_size < len(_SPECIAL) + len(_CHARS):
            raise ValueError(f"vocab_size must be >= {len(_SPECIAL) + len(_CHARS)}")
        self.vocab_size = vocab_size
        self._pieces = _SPECIAL + _CHARS + [f"<{k}>" for k in range(len(_SPECIAL) + len(_CHARS), vocab_size)]
        self._ids = {p: i for i, p in enumerate(self._pieces) if i >= len(_SPECIAL)}

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self._ids.get(ch, self._ids["?"]) for ch in text]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        out = []
        for i in ids:
            i = int(i)
            if skip_special_tokens and i < len(_SPECIAL):
                continue
            out.append(self._pieces[i])
        return "".join(out)

    def convert_ids_to_tokens(self, ids):
        return [self._pieces[int(i)] for i in ids]

    def apply_chat_template(self, *args, **kwargs):
        raise ValueError("the toy tokenizer has no chat template")

    def save_pretrained(self, path) -> None:  # adapters are saved without a tokenizer for toy models
        return None
