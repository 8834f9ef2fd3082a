"""What bench/encoder.py measures: matmul peaks, the towers it times, their FLOPs, the timing itself.

Shape letters: B frames per forward, N tokens per frame, D width, I MLP width.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from redvillm.families.registry import load_family
from redvillm.frames import normalize

CPU = torch.device("cpu")
VIT_B16 = dict(image_size=224, patch_size=16, vision_hidden=768, vision_layers=12, vision_heads=12)
# tower name -> (replica module under redvillm.data, its config's keyword arguments)
TOWERS: dict[str, tuple[str, dict]] = {
    "llava": ("tiny_llava", {}),
    "qwen2_vl": ("tiny_qwen2_vl", {}),
    "qwen2_5_vl": ("tiny_qwen2_vl", {"variant": "qwen2_5_vl"}),
    "deepseek_vl": ("tiny_deepseek_vl", {}),
    "deepseek_vl_hybrid": ("tiny_deepseek_vl_hybrid", {}),
    "internvl": ("tiny_internvl", {}),
    "llava_onevision": ("tiny_llava_onevision", {}),
    "gemma3": ("tiny_gemma3", {}),
    "vit_b16": ("tiny_llava", VIT_B16),
}
BIG = "vit_b16"


# ------------------------------------------------------------------ timing

def best_time(fn, threads: int, min_seconds: float) -> tuple[float, float]:
    """(wall seconds per call, CPU share) of `fn` called until min_seconds have passed (at least once).

    CPU share = process CPU seconds / (wall seconds x threads): near 1 when the threads had the
    cores to themselves, lower when other processes took them (a shared machine)."""
    torch.set_num_threads(threads)
    calls, cpu, started = 0, time.process_time(), time.perf_counter()
    while True:
        fn()
        calls += 1
        wall = time.perf_counter() - started
        if wall >= min_seconds:
            return wall / calls, (time.process_time() - cpu) / (wall * threads)


def keep_best(best: dict, key, measured: tuple[float, float]) -> None:
    """best[key] = the faster of what it held and `measured` (seconds, share)."""
    if key not in best or measured[0] < best[key][0]:
        best[key] = measured


# ------------------------------------------------------------------ matmul peaks

def matmul_shapes(batch: int, tokens: int, width: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the matmuls timed: the encoder's MLP up-projection (B*N, D) x (D, 4D), and a big square."""
    return {"encoder MLP (B*N, D) x (D, 4D)": (batch * tokens, width, 4 * width), "square": (2048, 2048, 2048)}


def matmul_call(shape: tuple[int, int, int], dtype: torch.dtype, path: str):
    """A function doing one (m, k) x (k, n) product; path "torch.mm" or "oneDNN" (the fp32 linear of
    torch.ops.mkldnn, which the encoder does not use: a reference for what the cores can do)."""
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = torch.randn(k, n, generator=generator).to(dtype)
    if path == "torch.mm":
        return lambda: torch.mm(a, b)
    weight = b.t().contiguous()
    return lambda: torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def bf16_support() -> dict:
    """What says bfloat16 could be fast here: the CPU's flags and oneDNN's own check (measured apart)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    found = [flag for flag in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f" {flag}" in flags]
    onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return {"cpu_flags": found, "onednn_bf16": onednn, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


# ------------------------------------------------------------------ towers

@dataclass
class Tower:
    """One frame encoder as stage one runs it, with a batch of its pixel values."""

    name: str
    encoder: nn.Module
    pixels: torch.Tensor  # (B, 3, h, w) in the encoder's dtype, normalized as encode_frames does
    dtype: torch.dtype
    attention: str  # the attention implementation the family loads it with
    linear: str = "torch"  # "oneDNN": nn.Linear swapped for torch.ops.mkldnn (an experiment, bench only)

    def __call__(self, batch: int):
        with torch.inference_mode():
            return self.encoder(self.pixels[:batch])


def build_replica(root: Path, name: str) -> Path:
    """The tower's checkpoint under root, built by its replica module (random weights: only speed counts)."""
    folder = root / name
    if not folder.exists():
        module, kwargs = TOWERS[name]
        cli = importlib.import_module(f"redvillm.data.{module}").CLI
        cli.build(folder, cli.config(**kwargs))
    return folder


def load_tower(checkpoint: Path, name: str, dtype: torch.dtype, batch: int, linear: str = "torch") -> Tower:
    family = load_family(str(checkpoint))
    encoder = family.load_frame_encoder(CPU, dtype)
    if linear == "oneDNN":
        swap_linears(encoder)
    preprocess = family.frame_preprocess()
    height, width = preprocess.fixed_output_hw()
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator)
    return Tower(name, encoder, normalize(frames, preprocess, dtype), dtype, attention_of(encoder), linear)


class OneDnnLinear(nn.Module):
    """nn.Linear through oneDNN's fp32 kernel instead of torch's BLAS (MKL): same weights, same result to
    fp32 rounding. Where MKL picks a narrower code path (AMD CPUs) this is up to ~1.8x faster."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def swap_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, OneDnnLinear(child))
        else:
            swap_linears(child)


def hf_models(encoder: nn.Module) -> list:
    """The outermost transformers models inside the encoder (a hybrid tower has two)."""
    from transformers import PreTrainedModel

    found, inside = [], set()
    for module in encoder.modules():  # parents come before their children
        if isinstance(module, PreTrainedModel) and id(module) not in inside:
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


def attention_of(encoder: nn.Module) -> str:
    names = {getattr(m.config, "_attn_implementation", None) or "?" for m in hf_models(encoder)}
    return "/".join(sorted(names)) or "?"


def set_attention(encoder: nn.Module, implementation: str) -> None:
    """transformers picks the attention function from the config at each forward; the config is the
    family's own object, shared by every encoder loaded from it, so set it before each timing."""
    for model in hf_models(encoder):
        model.set_attn_implementation(implementation)


# ------------------------------------------------------------------ FLOPs

def flops_per_frame(tower: Tower) -> int:
    """FLOPs of one frame through the encoder, counted by torch.utils.flop_counter.FlopCounterMode.

    PyTorch's counter has no formula for the CPU flash-attention kernel that sdpa runs here
    (aten._scaled_dot_product_flash_attention_for_cpu); it gets the one the other SDPA kernels
    use (QK^T and AV: 2 x 2 N^2 D per layer), so sdpa and eager count the same."""
    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v))
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        tower(1)
    return counter.get_total_flops()


def vit_flops_per_frame(encoder: nn.Module) -> int:
    """The same count by hand for a CLIP tower (LLaVA's), as a check on FlopCounterMode.

    Per layer that runs: QKV and output projections 4 x 2 N D^2, MLP 2 x 2 N D I, attention
    scores and weighted sum 2 x 2 N^2 D; plus the patch embedding 2 (N-1) D (3 P^2)."""
    config = encoder.tower.config
    # the family drops the layers past the one it reads
    layers = len(next(m for name, m in encoder.tower.named_modules() if name.endswith("encoder.layers")))
    width, inner, patch = config.hidden_size, config.intermediate_size, config.patch_size
    patches = (config.image_size // patch) ** 2
    tokens = patches + 1  # CLS
    per_layer = 8 * tokens * width**2 + 4 * tokens * width * inner + 4 * tokens**2 * width
    return layers * per_layer + 2 * patches * width * 3 * patch**2
