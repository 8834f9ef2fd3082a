"""bench/train.py's report: one rich table of every measurement, with the settings in its title."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from train_measures import BENCH


def report(results: dict, args) -> None:
    s, m = results["steps"], BENCH["model"]
    table = Table(title=f"redvillm-train: {args.videos} videos, {s['shape']}, batch {args.batch}, LLM width "
                        f"{m.text_hidden} x {m.text_layers} layers, pooling {BENCH['pooling']}, {args.workers} loader "
                        f"workers, torch threads {args.threads}")
    table.caption = (f"tiny LLaVA: {m.image_size} px, patch {m.patch_size}, CLIP {m.vision_hidden} wide x "
                     f"{m.vision_layers} layers, Llama {m.text_hidden} wide x {m.text_layers} layers; videos "
                     f"{BENCH['video']['size']} px, {args.frames} frames each; {args.rss_steps} steps per RSS run")
    for column in ("measure", "value", "note"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for rows in (_step_rows(s, results["loader"]), _check_rows(results["checks"], args), _byte_rows(results["bytes"]),
                 _memory_rows(results["rss"]), _run_rows(results)):
        for row in rows:
            table.add_row(*row)
    Console(width=160).print(table)


def _step_rows(s: dict, lo: dict) -> list[tuple[str, str, str]]:
    """Step from the cache vs with the encoder online, and the DataLoader's share of a step."""
    return [
        ("step, from the cache", f"{s['cached_ms']:.1f} ms", f"_step on pooled tokens (median of {s['cached_steps']})"),
        ("step, encoder online", f"{s['online_ms']:.1f} ms", f"of which encode_frames + pool "
         f"{s['online_encode_ms']:.1f} ms ({s['frames_per_step']} frames; median of {s['online_steps']})"),
        ("[bold]online / cache", f"[bold]x{s['ratio']:.1f}", "the per-step cost the cache removes"),
        ("loader wait", f"{lo['wait_ms']:.2f} ms", f"mean blocked in next(batches); max {lo['wait_max_ms']:.1f} ms "
         f"({lo['steps']} steps)"),
        ("loader step", f"{lo['step_ms']:.1f} ms", "mean _step in the same loop"),
        ("[bold]wait / (wait + step)", f"[bold]{100 * lo['wait_fraction']:.1f} %", "goal ~0"),
        ("first batch of an epoch", f"{lo['first_wait_ms']:.0f} ms",
         f"worker start, paid every epoch ({lo['epochs_started']} epochs started)"),
        ("batch build, in-process", f"{lo['build_batch_ms']:.1f} ms",
         f"num_workers=0: chat.encode {lo['chat_encode_ms_per_sample']:.2f} + pooled.get "
         f"{lo['pooled_get_ms_per_sample']:.2f} ms per sample, + collate"),
    ]


def _check_rows(ch: dict, args) -> list[tuple[str, str, str]]:
    """The finite checks' cost: end to end in interleaved rounds, and timed alone."""
    return [
        ("steps/s, finite checks on", f"{ch['with_steps_per_s']:.2f}", f"num_workers=0 (worst case); off: "
         f"{ch['without_steps_per_s']:.2f} steps/s (median of {ch['rounds']} interleaved rounds)"),
        ("[bold]on / off", f"[bold]x{ch['ratio']:.3f}", f"{ch['rounds']} rounds of {ch['steps_per_round']} steps "
         "each way; goal ~1"),
        ("[bold]checks alone, per step", f"[bold]{ch['check_ms_per_step']:.3f} ms",
         f"{100 * ch['check_share']:.2f} % of a step without them (B={args.batch} samples' data check + the step's "
         "loss/gradient check)"),
        ("pooling check, per video", f"{ch['pool_check_ms_per_video']:.2f} ms",
         f"once per video; reading + pooling it: {ch['read_pool_ms_per_video']:.2f} ms"),
    ]


def _byte_rows(by: dict) -> list[tuple[str, str, str]]:
    """Bytes read per sample from the pooled sidecar vs the raw cache, and the 7B's arithmetic."""
    shape, pooled, raw, big = by["shape"], by["pooled"], by["raw"], by["big"]
    return [
        ("bytes/sample, pooled", f"{pooled['array_bytes']:,.0f}", f"(T+N)*D*2 = {by['formula_pooled']:,}; "
         f"read(2): {pooled['syscall_bytes']:,.0f}; {pooled['reads']:.0f} h5py reads"),
        ("bytes/sample, raw cache", f"{raw['array_bytes']:,.0f}", f"T*N*D*2 = {by['formula_raw']:,}; "
         f"read(2): {raw['syscall_bytes']:,.0f} (T={shape['T']} N={shape['N']} D={shape['D']})"),
        ("[bold]raw / pooled", f"[bold]x{raw['array_bytes'] / pooled['array_bytes']:.1f}",
         f"read(2): x{raw['syscall_bytes'] / pooled['syscall_bytes']:.1f}"),
        (f"{big['name']}, T={big['T']}", f"x{big['raw'] / big['pooled']:.1f}",
         f"arithmetic: pooled {big['pooled'] / 1e6:.2f} MB vs raw {big['raw'] / 1e6:.1f} MB per sample "
         f"(N={big['N']} D={big['D']})"),
    ]


def _memory_rows(rss: dict) -> list[tuple[str, str, str]]:
    """Peak memory at the small vs the large question set, and run_train's own ms/step there."""
    small, large = (rss[n] for n in BENCH["rss_questions"])
    rows = [(f"peak RSS, {label}", f"x{large[key] / small[key]:.2f}",
             f"{small[key]:.0f} MiB ({small['questions']} questions) -> {large[key]:.0f} MiB "
             f"({large['questions']}); goal ~1")
            for key, label in (("parent_mib", "trainer (VmHWM)"), ("worker_mib", "largest loader worker"),
                               ("tree_rss_mib", "process tree, sum RSS"), ("tree_pss_mib", "process tree, sum PSS"))]
    rows.append(("run_train ms/step", f"{large['ms_per_step']:.1f} ms",
                 f"{small['ms_per_step']:.1f} ms at {small['questions']} questions; steps 2..{large['steps']}, "
                 "loader wait included"))
    return rows


def _run_rows(results: dict) -> list[tuple[str, str, str]]:
    """Wall time per phase and the machine's load while it ran."""
    phases = ", ".join(f"{name} {seconds:.0f}" for name, seconds in results["phases"].items())
    load = " -> ".join(f"{x:.1f}" for x in results["load_average"])
    return [("wall time", f"{results['seconds']:.0f} s", f"{phases} s"),
            ("machine load", f"{load}", f"1-min load average at start and after each phase ({os.cpu_count()} "
             "CPUs): other work on the machine slows every ms figure, not the ratios taken interleaved")]
