"""The surface every model family offers the three stages.

A family adapter hides how one image-LLM architecture (LLaVA, Qwen2-VL, DeepSeek-VL, ...) is
laid out in transformers: which processor numbers define a frame, which vision layer and token
selection the image LLM feeds its projector, and (for stage two) where the projector and the
image placeholder live. Stages talk only to this Protocol: nothing outside redvillm/families
names a family.

Adding a family: one module here with a class that has this surface (built as
``Cls(model, config, revision, image_size)``, image_size None unless `takes_image_size`), made
of the free functions in families/common.py where they fit; one row in registry.FAMILIES; a tiny
replica under data/ and one row in tests/test_family_conformance.py.

Optional: ``video_suffix(backbone) -> (S, K)``, vectors of the backbone's own that follow the
video tokens as they follow an image (LLaVA-OneVision's image_newline); frozen, never saved.

Shape letters: B batch of frames, N patches per frame, D vision width.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from redvillm.chat import ChatFormat
from redvillm.frames import FramePreprocess
from redvillm.batching import VideoBatch


class Family(Protocol):
    """One image-LLM checkpoint seen through its family's adapter."""

    name: str  # "llava", ...: the checkpoint's model_type
    model: str  # hub id or local directory, as the user gave it
    revision: str | None  # resolved commit hash when the checkpoint came from the hub
    config: Any  # the checkpoint's transformers config (AutoConfig)
    takes_image_size: bool  # class attribute: the tower takes any resolution, so --image-size applies

    def frame_token_width(self) -> int | None:
        """D of the cached (T, N, D) frame tokens, read off the config alone (stage two compares it
        with a cache before loading the LLM); None when the vision provenance already pins it."""
        ...

    def frame_preprocess(self) -> FramePreprocess:
        """The backbone's own image preprocessing, as numbers."""
        ...

    def load_frame_encoder(self, device: torch.device, dtype: torch.dtype) -> FrameEncoder:
        """The frozen vision encoder with the backbone's layer/token selection, in eval mode."""
        ...

    def vision_provenance(self) -> dict[str, Any]:
        """What makes cached tokens specific to this backbone (layer, strategy, ...)."""
        ...

    # Stage two and inference (K: LLM width).

    def load_backbone(self, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        """The image LLM, frozen, from from_pretrained; its vision tower may be dropped."""
        ...

    def projector(self, backbone: torch.nn.Module) -> torch.nn.Module:
        """g_z, the image LLM's own alignment module: (..., D) -> (..., K)."""
        ...

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, N, D) -> temporal tokens (T, D') and spatial tokens (N', D') as the projector takes them."""
        ...

    def chat_format(self) -> ChatFormat:
        """The backbone's chat template with one image placeholder, as token ids."""
        ...

    def backbone_inputs(self, batch: VideoBatch) -> dict[str, Any]:
        """Extra keyword arguments for the backbone's forward and generate beside inputs_embeds
        (e.g. what Qwen2-VL needs to build its 3-D rope positions); {} for 1-D-position LLMs."""
        ...


class FrameEncoder(Protocol):
    """(B, 3, H, W) pixel values -> (B, N, D) frame tokens, exactly what the projector sees."""

    num_patches: int  # N
    hidden_size: int  # D

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor: ...
