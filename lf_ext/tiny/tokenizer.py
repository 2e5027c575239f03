"""A small byte-level BPE tokenizer trained offline with the ``tokenizers`` library."""

from __future__ import annotations

import math

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
LLAMA_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]

_WORDS = """
a an the is are was were be of in on at to from with and or not this that these those there here what which
who where when how why many much one two three four five six seven eight nine ten zero 0 1 2 3 4 5 6 7 8 9
color colour shape object objects image picture photo background foreground place kind type answer word
number red green blue yellow purple orange white black gray grey brown pink circle square triangle star digit
clock time shows show shown left right top bottom center middle above below near far largest smallest
room desk screen wall floor window table phone app button menu list icon text title bar user assistant system
you are a helpful assistant chat between curious human artificial intelligence gives detailed polite answers
questions question please describe tell me see can do does yes no it its they them we us i my your
""".split()


def _corpus() -> list[str]:
    """Deterministic training text: scene vocabulary, simple sentences and clock times."""
    lines = [" ".join(_WORDS[i : i + 12]) for i in range(0, len(_WORDS), 12)]
    lines += [f"What {w} is the object? The answer is {w}." for w in _WORDS]
    lines += [f"The clock shows {h}:{m:02d}." for h in range(1, 13) for m in range(0, 60, 5)]
    return lines * 4


def train_bpe(special_tokens: list[str], vocab_size: int = 2048) -> Tokenizer:
    """Train a byte-level BPE on the fixed corpus; the result is deterministic."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def qwen_tokenizer(chat_template: str) -> PreTrainedTokenizerFast:
    """Qwen2-VL-style tokenizer: ChatML specials, ``<|im_end|>`` as EOS, ``<|endoftext|>`` as pad."""
    tok = train_bpe(QWEN_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
        model_max_length=32768,
    )


def llama_tokenizer(chat_template: str) -> PreTrainedTokenizerFast:
    """LLaVA-1.5-style tokenizer: ``<s>`` prepended, ``</s>`` EOS, ``<image>`` placeholder."""
    tok = train_bpe(LLAMA_SPECIAL_TOKENS)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=chat_template,
        model_max_length=4096,
    )


def embedding_rows(tokenizer) -> int:
    """Like real checkpoints: more embedding rows than tokens (new tokens land on spare rows)."""
    return int(math.ceil((len(tokenizer) + 16) / 64) * 64)
