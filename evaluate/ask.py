"""``ask``: one video, one question, answered by a trained run; the video is extracted on the fly
with stage one's own code (same sampling, preprocessing and vision features as the cache)."""

from __future__ import annotations

from pathlib import Path

import torch

from redvillm import distributed
from redvillm.batching import VideoSample, collate
from redvillm.errors import UserError
from redvillm.extract.decode import DecodeJob, DecodePool, DecodeSettings
from redvillm.extract.pipeline import encode_frames
from redvillm.families.registry import family_for_cache
from redvillm.model_io import load_model


def ask(run_dir: str, video: str, question: str, device: str = "auto", dtype: str = "auto",
        max_new_tokens: int = 64, decode_timeout: float = 120.0) -> str:
    info = distributed.DistInfo()
    torch_device = distributed.resolve_device(device, info)
    torch_dtype = distributed.resolve_dtype(dtype, torch_device)
    model = load_model(run_dir, torch_device, torch_dtype)
    cache_info = model.config.extra.get("cache", {})
    family = family_for_cache(model.config.model, model.config.revision, cache_info)
    settings = DecodeSettings(model.config.num_frames, cache_info.get("sampling_rule", "uniform"),
                              cache_info.get("short_videos", "repeat"), family.frame_preprocess())
    path = Path(video)
    # The decode pool, as in extraction: decoder noise captured, a hanging file timed out.
    with DecodePool(settings, num_workers=1, timeout=decode_timeout) as pool:
        result = next(pool.imap([DecodeJob(path.stem, path)]))
    if result.error is not None:
        raise UserError(f"{path}: cannot read this video ({result.error})")
    frames = result.frames  # (T, 3, h, w) uint8
    encoder = family.load_frame_encoder(torch_device, torch_dtype)
    tokens = encode_frames(encoder, torch.from_numpy(frames), 32, torch_device, torch_dtype, settings.preprocess)
    temporal, spatial = family.pool(torch.from_numpy(tokens))
    sample = VideoSample(model.chat.encode(question), temporal, spatial)
    pad = model.chat.tokenizer.pad_token_id if model.chat.tokenizer.pad_token_id is not None else model.chat.eos_id
    batch = collate([sample], model.adapter.layout, model.chat.placeholder_id, pad, padding_side="left",
                    with_labels=False).to(torch_device)
    return model.generate(batch, max_new_tokens=max_new_tokens)[0]
