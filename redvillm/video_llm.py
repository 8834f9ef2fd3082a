"""The video LLM: pooled frame tokens -> [g_t(temporal), g_z(spatial)] -> the frozen image LLM.

Shape letters: B batch, T frames, N patches (after the family's pooling), D vision width,
K LLM width, L sequence length, V video tokens of one sample (T + N with both poolings).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from redvillm.batching import Batcher, VideoBatch, VideoLayout, pad_id
from redvillm.chat import ChatFormat
from redvillm.pooling import TEMPORAL_MODULES, Pooling, TemporalModule, canonical_pooling, uses_temporal


class VideoAdapter(nn.Module):
    """The trainable part: g_z (the image LLM's projector) and g_t (the temporal module).

    pooling "both" makes [g_t(temporal), g_z(spatial)]; "time-averaged" (alias "temporal", the
    mean over time) keeps the spatial tokens only; "frame-averaged" (alias "spatial", the mean
    over patches) keeps the temporal tokens only.
    temporal_module "copy": g_t starts as a copy of the pretrained projector (the paper);
    "none": one projector for both token sets (Video-ChatGPT's baseline); "copy+mlp": the copy
    followed by a randomly initialised MLP; "random": the projector's architecture, random init.
    suffix: (S, K) vectors of the backbone put after each sample's video tokens, as it puts them
    after an image (LLaVA-OneVision's image_newline); frozen and not saved (they come with the backbone).
    """

    def __init__(self, projector: nn.Module, pooling: Pooling, temporal_module: TemporalModule, seed: int = 0,
                 suffix: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("suffix", None if suffix is None else suffix.detach().float().clone(), persistent=False)
        pooling = canonical_pooling(pooling)
        if temporal_module not in TEMPORAL_MODULES:
            raise ValueError(f"temporal_module must be one of {TEMPORAL_MODULES}, got {temporal_module!r}")
        self.pooling, self.temporal_module = pooling, temporal_module
        self.spatial_proj = projector
        self.temporal_proj = None  # None: g_t is g_z itself, or temporal tokens are not used
        if uses_temporal(pooling) and temporal_module != "none":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # random layers are a function of the seed alone
                self.temporal_proj = _temporal_module(projector, temporal_module)

    @property
    def layout(self) -> VideoLayout:
        return VideoLayout(self.pooling, 0 if self.suffix is None else self.suffix.shape[0])

    @property
    def uses_temporal(self) -> bool:
        return self.layout.uses_temporal

    @property
    def uses_spatial(self) -> bool:
        return self.layout.uses_spatial

    def forward(self, temporal: torch.Tensor | None, temporal_mask: torch.Tensor | None,
                spatial: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) + (B, T) valid rows, (B, N, D) -> (sum of V, K): each sample's tokens in turn."""
        parts = []
        g_t = self.temporal_proj if self.temporal_proj is not None else self.spatial_proj
        projected_t = g_t(temporal) if self.uses_temporal else None  # (B, T, K)
        projected_s = self.spatial_proj(spatial) if self.uses_spatial else None  # (B, N, K)
        batch = (temporal if temporal is not None else spatial).shape[0]
        for b in range(batch):
            if projected_t is not None:
                parts.append(projected_t[b][temporal_mask[b]])
            if projected_s is not None:
                parts.append(projected_s[b])
            if self.suffix is not None:
                parts.append(self.suffix.to(parts[-1].dtype))
        return torch.cat(parts)  # (sum of V, K)


def _temporal_module(projector: nn.Module, kind: str) -> nn.Module:
    module = copy.deepcopy(projector)
    if kind == "random":
        for layer in module.modules():
            if hasattr(layer, "reset_parameters") and layer is not module:
                layer.reset_parameters()
    if kind == "copy+mlp":
        width = _output_width(projector)
        module = nn.Sequential(module, nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
    return module


def _output_width(module: nn.Module) -> int:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features


class VideoLLM:
    """A frozen image LLM with a trainable VideoAdapter in front of it."""

    def __init__(self, backbone: nn.Module, adapter: VideoAdapter, chat: ChatFormat, device: torch.device,
                 backbone_inputs: Callable[[VideoBatch], dict] | None = None):
        self.backbone, self.adapter, self.chat, self.device = backbone, adapter, chat, device
        self.adapter_forward = adapter  # the training loop swaps in its DDP wrapper
        # The family's extra forward arguments (Qwen2-VL: what builds its 3-D rope positions).
        self.backbone_inputs = backbone_inputs or (lambda batch: {})
        # Many chat checkpoints ship a generation config that samples (top-k, top-p). redvillm
        # decodes greedily unless sampling parameters are given and recorded, so a checkpoint's
        # hidden defaults must never turn a "greedy" prediction into an unseeded sample.
        generation_config = getattr(backbone, "generation_config", None)
        if generation_config is not None:
            generation_config.update(do_sample=False, top_k=None, top_p=None, temperature=None)

    @property
    def batcher(self):
        """This model's redvillm.batching.Batcher (picklable: what DataLoader workers collate with)."""

        return Batcher(self.adapter.layout, self.chat.placeholder_id, pad_id(self.chat.tokenizer, self.chat.eos_id))

    def batch(self, samples: list, for_generation: bool = False) -> VideoBatch:
        """VideoSamples -> one VideoBatch: right-padded with labels for training and scoring,
        left-padded without labels for generation."""
        return self.batcher(samples, for_generation)

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.get_input_embeddings().weight.dtype

    def embed(self, batch: VideoBatch) -> torch.Tensor:
        """(B, L, K): text embeddings with the video tokens scattered at the placeholders."""
        text = self.backbone.get_input_embeddings()(batch.input_ids)
        video = self.adapter_forward(batch.temporal, batch.temporal_mask, batch.spatial)
        slots = (batch.input_ids == self.chat.placeholder_id).unsqueeze(-1)
        if int(slots.sum()) != video.shape[0]:
            raise RuntimeError(f"{int(slots.sum())} video placeholders for {video.shape[0]} video tokens")
        return text.masked_scatter(slots, video.to(text.dtype))

    def hidden_states(self, batch: VideoBatch) -> torch.Tensor:
        out = self.backbone.model(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask,
                                  **self.backbone_inputs(batch))
        return out.last_hidden_state  # (B, L, K)

    def logits(self, batch: VideoBatch) -> torch.Tensor:
        return self.backbone.lm_head(self.hidden_states(batch))  # (B, L, vocab)

    def loss_terms(self, batch: VideoBatch) -> tuple[torch.Tensor, int]:
        """(sum of next-token losses over answer tokens, their count): the LM head runs on those only."""
        hidden = self.hidden_states(batch)[:, :-1]  # position i predicts token i + 1
        targets = batch.labels[:, 1:]
        supervised = targets != -100
        logits = self.backbone.lm_head(hidden[supervised]).float()  # (answer tokens, vocab)
        return F.cross_entropy(logits, targets[supervised], reduction="sum"), int(supervised.sum())

    @torch.inference_mode()
    def answer_logprobs(self, batch: VideoBatch) -> torch.Tensor:
        """(B,) log-probability of each row's answer tokens given its prompt: scores candidate
        answers for multiple-choice evaluation."""
        hidden = self.hidden_states(batch)[:, :-1]
        targets = batch.labels[:, 1:]
        supervised = targets != -100
        logprobs = torch.log_softmax(self.backbone.lm_head(hidden).float(), dim=-1)  # (B, L - 1, vocab)
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * supervised).sum(dim=1)

    @torch.inference_mode()
    def generate(self, batch: VideoBatch, max_new_tokens: int = 64, **sampling) -> list[str]:
        """Answers for a left-padded batch; greedy unless sampling parameters say otherwise."""
        extra = self.backbone_inputs(batch)
        output = self.backbone.generate(
            inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens, pad_token_id=self.chat.tokenizer.pad_token_id or self.chat.eos_id,
            eos_token_id=self.chat.eos_id, **extra, **sampling,
        )
        if "input_ids" in extra:  # generate returns the prompt too when it is given ids
            output = output[:, batch.input_ids.shape[1]:]
        return [self.chat.decode(row) for row in output]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.adapter.parameters() if p.requires_grad)
