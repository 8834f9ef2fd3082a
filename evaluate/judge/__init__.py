"""The LLM judge: protocols (what is sent), reply parsing, a resumable reply cache, the run.

Criteria: "qa" (zero-shot QA: the judge says whether the prediction matches the answer,
``pred`` yes/no, and gives a ``score`` 0-5) and the generative benchmark's five scores:
"ci" correctness of information, "do" detail orientation, "cu" contextual understanding,
"tu" temporal understanding, "co" consistency.

- ``protocols``: the fields of a prediction row, redvillm's own prompts (the default);
- ``official``: the ``videochatgpt`` protocol, Video-ChatGPT's messages read from the user's
  copy of its scripts;
- ``parsing``: a verdict out of a reply (redvillm's tolerant rule or the original one);
- ``cache``: every reply on disk, so a rerun re-asks nothing;
- ``run``: ``judge_all``, bounded retries, per-row time bound, failures counted;
- ``backends``: who answers: an OpenAI-compatible server or a local transformers model;
- ``rows``: reading prediction files (ours or the peer's field names, JSONL or a JSON list)
  and exporting ours in the peer's format;
- ``results``: ``run_judge``, a predictions file -> the results JSON (what ``redvillm-eval
  judge`` runs).
"""

from redvillm.evaluate.judge.cache import VOLATILE_FIELDS, JudgeCache, cache_key, judge_identity
from redvillm.evaluate.judge.official import SCRIPTS, VideoChatGPTProtocol, load_script
from redvillm.evaluate.judge.parsing import Verdict, parse_original, parse_reply
from redvillm.evaluate.judge.protocols import (
    CRITERIA,
    Criterion,
    Message,
    RedvillmProtocol,
    build_messages,
    item_fields,
)
from redvillm.evaluate.judge.run import ItemVerdict, JudgeOutcome, JudgeProgress, judge_all
from redvillm.evaluate.judge.backends import (
    JudgeBackend,
    JudgeUnavailable,
    OpenAICompatibleJudge,
    TransformersJudge,
    chat_completions_url,
)

__all__ = [
    "CRITERIA", "SCRIPTS", "VOLATILE_FIELDS", "Criterion", "ItemVerdict", "JudgeBackend", "JudgeCache",
    "JudgeOutcome", "JudgeProgress", "JudgeUnavailable", "Message", "OpenAICompatibleJudge", "RedvillmProtocol",
    "TransformersJudge", "Verdict", "VideoChatGPTProtocol", "build_messages", "cache_key", "chat_completions_url",
    "item_fields", "judge_all", "judge_identity", "load_script", "parse_original", "parse_reply",
]
