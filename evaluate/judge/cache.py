"""The judge reply cache: every reply on disk, so a rerun or a crash re-asks nothing answered.

A journal (``redvillm.journal``: JSON lines, appended and fsync'd one per reply, a torn last
line from a kill is dropped), no pickle:
    {"key": sha256 hex, "reply": str, "criterion": str, "question_id": str, "attempt": int}
key = sha256 of the judge's identity (``describe()`` minus VOLATILE_FIELDS), the protocol,
the criterion, the attempt number and the exact messages. Replies arrive here already
masked by the backend (an API key a server echoes back is never written).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from redvillm.journal import append_journal, read_journal

# describe() keys that may change without changing the judge's answers (where it runs,
# client settings, what the server reported): left out of the cache key.
VOLATILE_FIELDS = frozenset({"endpoint", "client", "observed", "device", "runtime"})


class JudgeCache:
    """Judge replies by key, loaded from and appended to a journal file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._replies: dict[str, str] = {}
        for record in read_journal(self.path):
            if isinstance(record.get("key"), str) and isinstance(record.get("reply"), str):
                self._replies[record["key"]] = record["reply"]

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, key: str) -> str | None:
        return self._replies.get(key)

    def put(self, key: str, reply: str, **meta: Any) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_journal(self.path, [{"key": key, "reply": reply, **meta}])
            self._replies[key] = reply


def judge_identity(description: Mapping[str, Any]) -> dict:
    """What identifies a judge's answers: describe() without VOLATILE_FIELDS."""
    return {k: v for k, v in description.items() if k not in VOLATILE_FIELDS}


def cache_key(identity: Mapping[str, Any], criterion: str, messages: list[dict], attempt: int,
              protocol: str = "redvillm") -> str:
    blob = {"judge": identity, "criterion": criterion, "attempt": attempt, "messages": messages}
    if protocol != "redvillm":  # redvillm's keys stay those of caches written before protocols existed
        blob["protocol"] = protocol
    text = json.dumps(blob, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
