"""Which optional dependency comes with which extra, and the one-line error when one is missing.

The core install (``pip install redvillm``) is what a library user of ``open_cache`` /
``load_model`` / ``VideoLLM`` needs: torch, transformers, h5py, numpy, safetensors, pillow.
The rest comes in extras (setup.cfg): ``cli`` (click, rich: the redvillm-* commands), ``video``
(decord reads videos for extraction and for answering about a video file; PyAV writes the
synthetic videos), ``serve`` (starlette, uvicorn), ``lmms-eval`` and ``test`` (all of them).
"""

from __future__ import annotations

import importlib.util

from redvillm.errors import UserError

EXTRA_OF = {
    "click": "cli",
    "rich": "cli",
    "decord": "video",
    "av": "video",
    "starlette": "serve",
    "uvicorn": "serve",
}


def missing(*modules: str) -> list[str]:
    """The modules of `modules` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(*modules: str, purpose: str) -> None:
    """UserError naming the missing modules and the pip line that brings them, if any is missing."""
    absent = missing(*modules)
    if absent:
        extras = ",".join(sorted({EXTRA_OF[m] for m in absent}))
        raise UserError(f"{purpose} needs {', '.join(absent)}, not installed: pip install 'redvillm[{extras}]'")
