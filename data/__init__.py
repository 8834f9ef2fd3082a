"""Synthetic data and tiny models for tests and demos (no downloads)."""
