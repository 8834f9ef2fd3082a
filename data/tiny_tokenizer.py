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
