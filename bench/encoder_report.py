"""bench/encoder.py's report: the matmul peaks, the towers, and the ratios between ViT-B/16 runs."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from encoder_measures import BIG


def report(results: dict) -> None:
    console = Console(width=170)
    console.print(_matmul_table(results))
    console.print(_tower_table(results))
    for line in (_bf16_line(results), _flops_line(results), *_goal_lines(results), *_ratio_lines(results)):
        console.print(line)


def _matmul_table(results: dict) -> Table:
    args = results["settings"]
    table = Table(title=f"matmul peak: best of {args['rounds']} rounds; GFLOP/s = 2 m n k / seconds")
    for column in ("dtype", "path", "threads", "shape", "GFLOP/s", "CPU share"):
        table.add_column(column, justify="right" if column in ("threads", "GFLOP/s", "CPU share") else "left")
    for row in results["matmul"]:
        path = row["path"] if row["path"] == "torch.mm" else f"{row['path']} (not the encoder's path)"
        mnk = " x ".join(map(str, row["mnk"]))
        table.add_row(row["dtype"], path, str(row["threads"]), f"{row['shape']}: {mnk} (m k n)",
                      f"{row['gflops']:.1f}", f"{row['cpu_share']:.2f}")
    return table


def _tower_table(results: dict) -> Table:
    args = results["settings"]
    table = Table(title=f"frame encoders under inference_mode: best of {args['rounds']} rounds; % of peak = "
                        "GFLOP/frame x frames/s / the matmul peak at the same dtype, threads and path")
    table.caption = ("CPU share = process CPU seconds / (wall seconds x threads), low when other processes held the "
                     "cores; % per CPU-s = % of peak with the run and the peak each per CPU-second it got")
    for column in ("run", "input", "N x D", "attention", "dtype", "threads", "batch", "GFLOP/frame", "frames/s",
                   "GFLOP/s", "% of peak", "CPU share", "% per CPU-s"):
        table.add_column(column, justify="left" if column in ("run", "attention", "dtype") else "right")
    for row in results["towers"]:
        table.add_row(row["label"], "x".join(map(str, row["input_hw"])), f"{row['tokens']} x {row['width']}",
                      row["attention"], row["dtype"], str(row["threads"]), str(row["batch"]),
                      f"{row['gflop_per_frame']:.4g}", f"{row['frames_per_s']:.3g}", f"{row['gflops']:.1f}",
                      f"{100 * row['fraction']:.0f}", f"{row['cpu_share']:.2f}",
                      f"{100 * row['fraction_cpu']:.0f}")
    return table


def _bf16_line(results: dict) -> str:
    bf16, threads = results["bf16"], results["settings"]["threads"]
    timed = any(row["dtype"] == "bfloat16" for row in results["towers"])
    if timed:
        verdict = "so the ViT-B/16 tower was timed in bfloat16"
    elif bf16["bf16_over_fp32"] <= 1.0:
        verdict = "so no bfloat16 tower run (it would only be slower)"
    else:
        verdict = "but no bfloat16 tower run: not in --compare"
    return (f"bfloat16: CPU flags {', '.join(bf16['cpu_flags']) or 'none of avx512_bf16/amx_bf16/avx512f/avx2'}, "
            f"torch CPU capability {bf16['cpu_capability']}, oneDNN bf16 {'yes' if bf16['onednn_bf16'] else 'no'}; "
            f"a bf16 torch.mm ran {bf16['bf16_over_fp32']:.2f}x the fp32 one at {_threads(threads)}, {verdict}")


def _flops_line(results: dict) -> str:
    line = f"FLOPs/frame: {results['flops_method']}"
    analytic = results["vit_b16_analytic_gflop_per_frame"]
    counted = [row["gflop_per_frame"] for row in results["towers"] if row["tower"] == BIG]
    if analytic and counted:
        line += f"; {BIG} by hand (ViT formula) {analytic:.3f} vs counted {counted[0]:.3f} GFLOP"
    return line


def _base(results: dict) -> dict | None:
    return next((row for row in results["towers"] if row["label"] == BIG), None)


def _goal_lines(results: dict) -> list[str]:
    base = _base(results)
    if base is None:
        return []
    met = "met" if base["fraction"] >= results["goal"] else "NOT met"
    lines = [f"goal: {BIG} at float32, {_threads(base['threads'])}, batch {base['batch']} reaches "
             f"{100 * base['fraction']:.0f} % of the fp32 torch.mm peak (goal >= {100 * results['goal']:.0f} %): {met}"]
    if base["cpu_share"] < 0.9:
        lines.append(f"  its CPU share was {base['cpu_share']:.2f}: other processes held the cores; per CPU-second it "
                     f"got, {100 * base['fraction_cpu']:.0f} %; rerun when the machine is quieter, or with more "
                     "--rounds")
    return lines


def _ratio_lines(results: dict) -> list[str]:
    """One line per ViT-B/16 variant: what differs from the default run, and the default's speed over it."""
    base = _base(results)
    if base is None:
        return []
    lines = []
    for row in results["towers"]:
        if row["tower"] == BIG and row is not base:
            keys = ("dtype", "attention", "linear", "threads", "batch")
            differs = [f"{key} {row[key]} (not {base[key]})" for key in keys if base[key] != row[key]]
            lines.append(f"{BIG} with {', '.join(differs)}: {row['frames_per_s'] / base['frames_per_s']:.2f}x the "
                         "default run's frames/s")
    return lines


def _threads(count: int) -> str:
    return f"{count} thread{'s' if count > 1 else ''}"
