"""`lmms-eval --model redvillm`: a trained redvillm run as an lmms-eval model.

lmms-eval (>= 0.7) finds this class through the ``lmms_eval.models`` entry point that redvillm's
setup.cfg declares; nothing in lmms-eval is edited. Each request's video goes through stage
one's own decode + encode + pooling and the trained run answers it (``redvillm.VideoAnswerer``),
so no token cache is needed. Only ``generate_until`` is served: the run answers one question
about one video in one turn.

    lmms-eval --model redvillm --model_args model_dir=RUN,device=cuda --batch_size 8 \\
        --tasks activitynetqa,videochatgpt --log_samples --output_path OUT

This module imports lmms-eval, so only lmms-eval imports it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from tqdm import tqdm

MODEL_NAME = "redvillm"
DEFAULT_MAX_NEW_TOKENS = 64  # as `redvillm-eval predict`; tasks normally set their own
RECENT_VIDEOS = 64  # pooled tokens kept: benchmarks ask several questions about one video
# Generation keys that only mean something to image models (lmms-eval's llava tasks pass them).
IMAGE_ONLY_KEYS = frozenset({"image_aspect_ratio"})
KNOWN_KEYS = frozenset({"until", "max_new_tokens", "do_sample", "temperature", "top_p", "num_beams"})


def manifest():
    """The entry point's payload (lmms-eval imports the class only when `--model redvillm` asks)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.RedVillm")


@dataclass(frozen=True)
class Generation:
    """One task's generation settings, as the answerer takes them (hashable: requests are grouped by it)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stop: tuple[str, ...] = ()
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    @classmethod
    def from_task(cls, gen_kwargs: dict | None, task: str) -> Generation:
        kwargs = dict(gen_kwargs or {})
        if int(kwargs.get("num_beams", 1) or 1) > 1:
            raise ValueError(f"task {task}: num_beams={kwargs['num_beams']} asks for beam search, which redvillm "
                             "does not do; set num_beams: 1 in the task's generation_kwargs (or --gen_kwargs)")
        unknown = sorted(set(kwargs) - KNOWN_KEYS - IMAGE_ONLY_KEYS)
        if unknown:
            logger.warning(f"redvillm: task {task} sets {unknown} in generation_kwargs; redvillm ignores them")
        until = kwargs.get("until") or ()
        stop = (until,) if isinstance(until, str) else tuple(s for s in until if s)
        temperature = kwargs.get("temperature")
        temperature = None if temperature is None else float(temperature)
        # temperature 0 means greedy (lmms-eval's convention); otherwise an explicit do_sample
        # decides, and a positive temperature alone asks for sampling.
        do_sample = bool(kwargs.get("do_sample", temperature is not None and temperature > 0))
        if temperature == 0.0:
            do_sample = False
        if not do_sample:
            return cls(int(kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS), stop)
        return cls(int(kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS), stop, True,
                   1.0 if temperature is None else temperature, float(kwargs.get("top_p", 1.0) or 1.0))


class RedVillm(lmms):
    """A redvillm-train output directory, loaded once, answering lmms-eval's generate_until requests."""

    is_simple = True

    def __init__(self, model_dir: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int | str = 1, max_batch_size: int | None = None, answerer=None, **unknown) -> None:
        """`answerer`: an already loaded VideoAnswerer instead of `model_dir` (for lmms-eval's Python
        API: ``simple_evaluate(model=RedVillm(answerer=...), ...)``). `max_batch_size` is lmms-eval's
        --max_batch_size, which only matters with --batch_size auto, which redvillm refuses."""
        super().__init__()
        if unknown:
            raise TypeError(f"--model_args {sorted(unknown)}: not an argument of the redvillm model; it takes "
                            "model_dir (a redvillm-train output), device, dtype; the batch size comes from --batch_size")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"--batch_size {batch_size}: redvillm needs a whole number >= 1 (no 'auto')")
        self._batch_size = int(batch_size)
        self._rank, self._world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if answerer is None and model_dir is None:
            raise ValueError("--model_args model_dir=RUN: the redvillm model needs a redvillm-train output directory")
        if answerer is None:
            from redvillm import VideoAnswerer

            answerer = VideoAnswerer.load(model_dir, device=_rank_device(device), dtype=dtype)
        self.answerer = answerer
        self._recent: OrderedDict[str, object] = OrderedDict()  # video path -> pooled tokens

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        """Where the run lives (lmms-eval puts its cross-process counters there)."""
        return self.answerer.model.device

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answers in request order, with their token counts (the prompt's include the video
        tokens); requests sharing generation settings are answered in batches."""
        groups: dict[Generation, list[int]] = {}
        items: list[tuple[str, str]] = []
        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            items.append((self._video_of(doc_to_visual, task, split, doc_id), context))
            groups.setdefault(Generation.from_task(gen_kwargs, task), []).append(index)
        answers: list[GenerationResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="redvillm answering")
        for generation, indices in groups.items():
            for start in range(0, len(indices), self._batch_size * 8):
                chunk = indices[start : start + self._batch_size * 8]  # progress without losing batching
                tokens = self._pooled([items[i][0] for i in chunk])
                done = self.answerer.generate([(tokens[items[i][0]], items[i][1]) for i in chunk],
                                              max_new_tokens=generation.max_new_tokens, stop=list(generation.stop),
                                              do_sample=generation.do_sample, temperature=generation.temperature,
                                              top_p=generation.top_p, batch_size=self._batch_size)
                for i, answer in zip(chunk, done, strict=True):
                    answers[i] = GenerationResult(answer.text, TokenCounts(answer.prompt_tokens,
                                                                           answer.completion_tokens))
                bar.update(len(chunk))
        bar.close()
        return answers

    def _pooled(self, videos: list[str]) -> dict[str, object]:
        """Pooled tokens of each distinct video, decoded and encoded once while recently asked about."""
        todo = list(dict.fromkeys(v for v in videos if v not in self._recent))
        for video, tokens in zip(todo, self.answerer.tokens_each(todo) if todo else [], strict=True):
            if isinstance(tokens, Exception):
                raise tokens
            self._recent[video] = tokens
        found = {}
        for video in videos:
            self._recent.move_to_end(video)
            found[video] = self._recent[video]
        while len(self._recent) > RECENT_VIDEOS:
            self._recent.popitem(last=False)
        return found

    def clean(self) -> None:
        """lmms-eval calls this once all requests are answered: stop the decoder processes too."""
        self._recent.clear()
        self.answerer.close()
        super().clean()

    def _video_of(self, doc_to_visual: Callable, task: str, split: str, doc_id: int) -> str:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if not (isinstance(visuals, list) and len(visuals) == 1 and isinstance(visuals[0], (str, os.PathLike))):
            raise ValueError(f"task {task} (doc {doc_id}): redvillm answers about one video file per question, "
                             f"but the task gave {_describe(visuals)}; run it on video tasks only")
        return str(visuals[0])

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "redvillm serves generate_until tasks only: its answerer generates answers and does not score "
            "given continuations, so tasks with output_type loglikelihood or multiple_choice cannot run; "
            "use a generate_until task (activitynetqa, videochatgpt)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "redvillm answers one question about one video in one turn (that is how its projectors are "
            "trained), so generate_until_multi_round tasks cannot run; use a single-turn generate_until task")


def _rank_device(device: str) -> str:
    """Under torchrun / `accelerate launch` each process answers its share on its own GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device in ("auto", "cuda"):
        import torch

        if device == "cuda" or torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _describe(visuals) -> str:
    if not isinstance(visuals, list):
        return type(visuals).__name__
    return f"{len(visuals)} visuals ({', '.join(sorted({type(v).__name__ for v in visuals})) or 'none'})"
