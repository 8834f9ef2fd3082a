"""Inference and judging: zero-shot QA and the video generative benchmark."""
