"""The separated layout of one image: ``[BG_START] background [BG_END] [OBJ_START] object [OBJ_END]``."""

from __future__ import annotations

BG_START, BG_END, OBJ_START, OBJ_END = "[BG_START]", "[BG_END]", "[OBJ_START]", "[OBJ_END]"
SEPARATORS = (BG_START, BG_END, OBJ_START, OBJ_END)


def separated_placeholder(n_background: int, n_object: int, image_token: str) -> str:
    """Token text for one image's visual tokens in the separated layout."""
    return f"{BG_START}{image_token * n_background}{BG_END}{OBJ_START}{image_token * n_object}{OBJ_END}"


def add_separator_tokens(tokenizer) -> list[int]:
    """Add the four separators as special tokens (idempotent); return their ids in SEPARATORS order."""
    missing = [tok for tok in SEPARATORS if tok not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return separator_ids(tokenizer)


def separator_ids(tokenizer) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(list(SEPARATORS))
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError(f"the tokenizer lacks the bgobj separator tokens {SEPARATORS}")
    return ids
