"""Our frame encoder feeds the projector exactly what LLaVA's own get_image_features feeds it."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

from redvillm.data.tiny_llava import TinyLlavaConfig, build_tiny_llava
from redvillm.families.common import load_submodule_state
from redvillm.families.registry import load_family


def reference_image_features(model_dir, pixel_values):
    """transformers' own path: full from_pretrained, get_image_features (projected)."""
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=pixel_values)
    return model, torch.stack(list(out.pooler_output))


def ours_projected(model_dir, model, pixel_values):
    family = load_family(str(model_dir))
    encoder = family.load_frame_encoder(torch.device("cpu"), torch.float32)
    with torch.no_grad():
        tokens = encoder(pixel_values)  # (B, N, D): what we cache
        return tokens, model.model.multi_modal_projector(tokens)


def wrap_recording(load, calls):
    def recorded(*args, **kwargs):
        calls.append(args)
        return load(*args, **kwargs)

    return recorded


def check_parity(model_dir):
    pixel_values = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    model, reference = reference_image_features(model_dir, pixel_values)
    tokens, projected = ours_projected(model_dir, model, pixel_values)
    torch.testing.assert_close(projected, reference, rtol=1e-5, atol=1e-5)
    return tokens


def test_default_layer_and_strategy_match_get_image_features(tiny_llava):
    tokens = check_parity(tiny_llava)
    assert tokens.shape == (3, 49, 64)  # CLS dropped: 7 x 7 patches


@pytest.mark.parametrize("layer,strategy,shape", [([-3, -1], "default", (3, 49, 128)), (-1, "full", (3, 50, 64))])
def test_layer_list_and_full_strategy(tmp_path, layer, strategy, shape):
    cfg = TinyLlavaConfig(vision_feature_layer=layer, vision_feature_select_strategy=strategy, vision_layers=3)
    model_dir = build_tiny_llava(tmp_path / "variant", cfg)
    assert check_parity(model_dir).shape == shape


def test_legacy_and_sharded_checkpoint_layouts(tiny_llava, tmp_path, monkeypatch):
    """llava-hf checkpoints on the hub keep transformers-4 key names and are sharded."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for path in tiny_llava.iterdir():
        if path.name != "model.safetensors":
            (legacy / path.name).write_bytes(path.read_bytes())
    state = load_file(tiny_llava / "model.safetensors")
    legacy_names = [  # what llava-hf's checkpoints, saved by transformers 4, call things
        (r"^(model\.)?vision_tower\.(vision_model\.)?", "vision_tower.vision_model."),
        (r"^(model\.)?language_model\.(model\.)?", "language_model.model."),
        (r"^(model\.)?multi_modal_projector\.", "multi_modal_projector."),
        (r"^lm_head\.", "language_model.lm_head."),
    ]
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in legacy_names:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    keys = sorted(renamed)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in halves.items():
        save_file({k: renamed[k].contiguous() for k in part}, legacy / name, metadata={"format": "pt"})
    weight_map = {k: name for name, part in halves.items() for k in part}
    (legacy / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    # The vision tower alone is read from the shards, under its legacy prefix.
    tower_state = load_submodule_state(str(legacy), ("model.vision_tower.", "vision_tower."))
    assert tower_state and all(k.startswith("vision_model.") for k in tower_state)
    loaded = []
    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained",
                        wrap_recording(LlavaForConditionalGeneration.from_pretrained, loaded))
    check_parity(legacy)
    assert len(loaded) == 1  # the reference's full load only: ours read the tower alone
