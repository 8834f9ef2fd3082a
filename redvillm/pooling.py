"""The pooling modes' names: which token sets go in front of the LLM (no torch, so CLIs import it cheaply).

"both" puts [g_t(temporal tokens), g_z(spatial tokens)]; "time-averaged" the spatial tokens (the
mean over the T frames) only; "frame-averaged" the temporal tokens (the mean over the N patches)
only. The paper's names are kept as aliases: its "temporal pooling" averages over time, so it
keeps the *spatial* tokens, and its "spatial pooling" keeps the temporal ones. Configs record
the canonical name; runs that recorded an alias still load.
"""

from __future__ import annotations

from typing import Literal

Pooling = Literal["both", "time-averaged", "frame-averaged", "temporal", "spatial"]
POOLINGS: tuple[str, ...] = ("both", "time-averaged", "frame-averaged")
POOLING_ALIASES: dict[str, str] = {"temporal": "time-averaged", "spatial": "frame-averaged"}
# How g_t, the temporal tokens' projector, starts: a copy of g_z, g_z itself, a copy plus a random MLP, random.
TemporalModule = Literal["copy", "none", "copy+mlp", "random"]
TEMPORAL_MODULES: tuple[str, ...] = ("copy", "none", "copy+mlp", "random")


def canonical_pooling(name: str) -> str:
    """A pooling name or its alias -> the canonical name; ValueError for anything else."""
    canonical = POOLING_ALIASES.get(name, name)
    if canonical not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join((*POOLINGS, *POOLING_ALIASES))}, got {name!r}")
    return canonical


def uses_temporal(pooling: str) -> bool:
    """Whether the temporal tokens (T of them) go in front of the LLM."""
    return canonical_pooling(pooling) in ("both", "frame-averaged")


def uses_spatial(pooling: str) -> bool:
    """Whether the spatial tokens (N of them) go in front of the LLM."""
    return canonical_pooling(pooling) in ("both", "time-averaged")
