"""The evaluation commands' settings, torch-free so the command line is built without loading models.

``PredictConfig`` is what ``run_predict`` answers with, ``JudgeConfig`` what ``run_judge`` scores
with. A field's ``help`` metadata is its --help text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from redvillm.settings import setting

PredictTask = Literal["qa", "generic", "temporal", "consistency"]  # what a questions file asks for
JudgeTask = Literal["qa", "ci", "do", "cu", "tu", "co"]  # the same names as the judge's CRITERIA
JUDGE_TASKS: tuple[str, ...] = get_args(JudgeTask)


@dataclass
class PredictConfig:
    model_dir: str = setting(help="A redvillm-train output directory.", path=True)
    cache: str = setting(help="Token cache of the benchmark's videos.", path=True)
    questions: str = setting(help="Questions file (any supported format).", path=True)
    output: str = setting(help="Predictions JSONL (appended; reruns resume).", path=True)
    answers: str | None = setting(None, "ActivityNet-QA answers file, if not beside.", path=True)
    task: PredictTask | None = setting(None, "Override the task detected from the file.")
    batch_size: int = 8
    max_new_tokens: int = 64
    do_sample: bool = setting(False, "Sample instead of greedy decoding.")
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    overwrite: bool = setting(False, "Start OUTPUT anew; without it only the run, cache, questions and generation "
                                     "settings that started OUTPUT may resume it.")

    def __post_init__(self):
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")


@dataclass
class JudgeConfig:
    predictions: str = setting(path=True)  # redvillm-eval predict output, or Video-ChatGPT's prediction JSON
    task: JudgeTask = setting(help="qa: zero-shot QA; ci/do/cu/tu/co: the generative benchmark's criteria.")
    output: str = setting(help="Results JSON.", path=True)
    dataset: str | None = setting(None, "msvd, msrvtt, tgif or activitynet (default: from the file name).")
    judge_url: str | None = setting(None, "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1. The API key "
                                          "goes to this host only: redirects are not followed.")
    judge_model: str | None = setting(None, "Exact judge model name (pinned, recorded in the results).")
    judge_local: str | None = setting(None, "Or a local transformers model as judge.")
    api_key_env: str = setting("OPENAI_API_KEY", "Environment variable holding the API key (masked as *** in "
                                                 "everything written).")
    protocol: Literal["redvillm", "videochatgpt"] = setting(
        "redvillm", "Whose messages the judge gets: ours, or exactly those of Video-ChatGPT's scripts (needs "
                    "--official-scripts). Only videochatgpt with a gpt-3.5-turbo judge is comparable with published "
                    "numbers.")
    official_scripts: str | None = setting(None, "Your copy of Video-ChatGPT's quantitative_evaluation/ "
                                                 "folder (read, never run).", path=True)
    original_scoring: bool = setting(False, "Score as the original scripts: int() truncation, yes/no by substring, "
                                            "strict reply parsing.")
    attempts: int = setting(3, "Asks per row before an unparseable reply counts as judge_failed.")
    retries: int = setting(4, "HTTP retries per ask (429, 5xx, timeouts, non-JSON bodies).")
    timeout: float = setting(60.0, "Seconds per HTTP request (each socket wait).")
    row_timeout: float = setting(300.0, "Seconds per row, all asks and retries included; a row over it is "
                                        "judge_failed and the run goes on. A hanging judge costs at most this per "
                                        "row.")
    stop_after_failures: int = setting(20, "After this many rows in a row the judge did not answer, the rest are "
                                           "marked judge_failed without asking (0: never).")
    workers: int = setting(1, "Parallel requests to an HTTP judge.")
    cache: str | None = setting(None, "Judge reply cache (default: beside the results).")
    dry_run: int = setting(0, "Write the request bodies of the first N rows to OUTPUT-stem.requests.jsonl and send "
                              "nothing (to check the messages).")

    def __post_init__(self):
        if self.task not in JUDGE_TASKS:
            raise ValueError(f"task must be one of {', '.join(JUDGE_TASKS)}")
        if self.judge_url and not self.judge_model:
            raise ValueError("--judge-url needs --judge-model: the exact, pinned judge model name")
        if self.judge_url and self.judge_local:
            raise ValueError("--judge-url and --judge-local are exclusive")
        if self.protocol not in ("redvillm", "videochatgpt"):
            raise ValueError("protocol must be redvillm or videochatgpt")
        if self.protocol == "videochatgpt" and not self.official_scripts:
            raise ValueError("--protocol videochatgpt needs --official-scripts DIR: your copy of Video-ChatGPT's "
                             "quantitative_evaluation/ folder")
        if self.timeout <= 0 or self.row_timeout <= 0:
            raise ValueError("--timeout and --row-timeout must be > 0")
