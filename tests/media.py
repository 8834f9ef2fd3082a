"""Broken media of every kind a crawled video dataset contains, written on demand."""

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def not_a_video(path: Path) -> Path:
    path.write_text("<html>404 Not Found</html>\n" * 20)
    return path


def truncated(good: Path, path: Path, keep: float = 0.3) -> Path:
    data = good.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def garbled(good: Path, path: Path, seed: int = 0) -> Path:
    """The container header survives, the rest is noise: decoders choke mid-stream."""
    data = bytearray(good.read_bytes())
    rng = np.random.default_rng(seed)
    start = min(2048, len(data) // 4)
    data[start:] = rng.integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def audio_only(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = (np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 440 / rate) * 0.3).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start : start + 1024][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def never_ending(path: Path) -> Path:
    """A named pipe nobody writes to: opening it blocks forever, as a hung decoder does."""
    os.mkfifo(path)
    return path


def texture_clip(path: Path, width: int, height: int, frames: int, seed: int = 0) -> Path:
    """A clip of any size (even sides, for yuv420p) scrolling a random texture one pixel a frame;
    one keyframe for the whole clip (x264's default interval is longer), so seeking back is slow."""
    texture = np.random.default_rng(seed).integers(0, 256, (height, width + frames, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.ascontiguousarray(texture[:, i : i + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
