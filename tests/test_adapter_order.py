"""The adapter's video tokens are exactly [g_t(temporal), g_z(spatial)], in that order.

On the LLaVA replica the projector is linear_1 -> GELU -> linear_2 (LlavaMultiModalProjector);
here it is applied by hand with each module's own weights, so swapping the two token sets or the
two modules, or dropping padded temporal rows wrongly, changes the result.
"""

import pytest
import torch
import torch.nn.functional as F

from redvillm.model_io import build_video_llm

CPU = torch.device("cpu")


def _by_hand(projector, x):
    """LlavaMultiModalProjector's forward written out: (..., D) -> (..., K)."""
    assert projector.act.__class__.__name__ == "GELUActivation"  # the replica's projector_hidden_act
    hidden = F.gelu(x @ projector.linear_1.weight.T + projector.linear_1.bias)
    return hidden @ projector.linear_2.weight.T + projector.linear_2.bias


@pytest.fixture
def adapter(tiny_llava):
    torch.manual_seed(0)
    adapter = build_video_llm(str(tiny_llava), "both", "copy", CPU, torch.float32).adapter
    with torch.no_grad():  # g_t starts as a copy of g_z: make the two tell apart
        for parameter in adapter.temporal_proj.parameters():
            parameter.add_(torch.randn_like(parameter))
    return adapter


def test_video_tokens_are_temporal_then_spatial_each_through_its_own_module(adapter):
    temporal, spatial = torch.randn(2, 8, 64), torch.randn(2, 49, 64)  # (B, T, D), (B, N, D)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False  # the second video has T = 5: padded rows are not video tokens
    with torch.no_grad():
        got = adapter(temporal, mask, spatial)  # (sum of V, K)
        expected = torch.cat([torch.cat([_by_hand(adapter.temporal_proj, temporal[b][mask[b]]),
                                         _by_hand(adapter.spatial_proj, spatial[b])]) for b in range(2)])
    assert got.shape == (8 + 49 + 5 + 49, 64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling, uses", [("time-averaged", "spatial"), ("frame-averaged", "temporal")])
def test_one_token_set_poolings_keep_only_their_set(tiny_llava, pooling, uses):
    adapter = build_video_llm(str(tiny_llava), pooling, "copy", CPU, torch.float32).adapter
    temporal, spatial = torch.randn(1, 8, 64), torch.randn(1, 49, 64)
    with torch.no_grad():
        got = adapter(temporal, torch.ones(1, 8, dtype=torch.bool), spatial)
        g = adapter.temporal_proj if uses == "temporal" else adapter.spatial_proj
        expected = _by_hand(g, (temporal if uses == "temporal" else spatial)[0])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
