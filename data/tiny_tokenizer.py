"""A byte-level BPE tokenizer for the tiny replicas: any UTF-8 text (Chinese included) round-trips.

Every tiny replica (tiny_llava, tiny_qwen2_vl, ...) trains one on a small deterministic corpus
about the synthetic videos, with its family's own special tokens, so that prompts stay short
and the special tokens are single ids exactly as in the real checkpoints.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers


def byte_level_bpe(corpus: list[str], vocab_size: int, special: list[str], added: list[str]) -> Tokenizer:
    """`special` take ids 0.. (part of vocab_size); `added` come after the BPE vocabulary.

    Both kinds are matched in raw text (normalized=False) and skipped by skip_special_tokens.
    """
    bpe = Tokenizer(models.BPE())  # no unk_token: every byte is in the alphabet
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    return bpe


# What the synthetic benchmark asks about; BPE merges follow these words so prompts stay short.
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "cyan", "magenta"]
SHAPES = ["square", "circle", "triangle", "shape", "object", "box"]
DIRECTIONS = ["left", "right", "up", "down", "top", "bottom"]
QUESTIONS = [
    "Which colour appeared first in the video?",
    "Which color appeared last?",
    "Does the square move to the left or to the right?",
    "In which direction does the object move across the frame?",
    "What happened first, and what happened second?",
    "Describe the image. What is in the video?",
    "Answer with one word: yes or no.",
]


def video_corpus(turn: str) -> list[str]:
    """Deterministic lines about coloured shapes moving in videos, each rendered with `turn`, a
    family's chat layout with {question} and {answer} slots and no special tokens (the trainer
    would spend merges on their bytes)."""
    lines = []
    for i, colour in enumerate(COLOURS):
        for j, shape in enumerate(SHAPES):
            for k, direction in enumerate(DIRECTIONS):
                question = QUESTIONS[(i + j + k) % len(QUESTIONS)]
                other = COLOURS[(i + 1) % len(COLOURS)]
                order = ("first", "second", "last")[(i + k) % 3]
                verdict = ("yes", "no")[(j + k) % 2]
                answer = (f"The {colour} {shape} moves {direction}, {verdict}. "
                          f"It appeared {order}, before the {other} one, which appeared after it.")
                lines.append(turn.format(question=question, answer=answer))
    return lines
