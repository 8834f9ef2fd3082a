"""``ask``: one video, one question, answered by a trained run (a thin wrapper of VideoAnswerer:
the video is extracted on the fly with stage one's own code, as the run's cache was)."""

from __future__ import annotations

from redvillm.answerer import VideoAnswerer
from redvillm.errors import UserError


def ask(run_dir: str, video: str, question: str, device: str = "auto", dtype: str = "auto",
        max_new_tokens: int = 64, decode_timeout: float = 120.0) -> str:
    if not question.strip():
        raise UserError("the question is empty; ask something about the video")
    with VideoAnswerer.load(run_dir, device, dtype, decode_timeout=decode_timeout) as answerer:
        return answerer.answer([(video, question)], max_new_tokens=max_new_tokens)[0]
