"""redvillm: turn a ready-made image LLM into a video LLM, the RED-VILLM way.

Stage one (``redvillm.extract``) caches the frozen vision encoder's frame tokens to HDF5;
stage two (``redvillm.train``) pools them and trains only the projector and its temporal
copy; ``redvillm.evaluate`` answers and judges. The public entry points are re-exported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "open_cache", "load_model", "VideoAnswerer"]


def __getattr__(name):
    # Lazy so that `import redvillm` stays cheap (no torch, no h5py) for the CLI's --help.
    if name == "open_cache":
        from redvillm.cache import open_cache

        return open_cache
    if name == "load_model":
        from redvillm.model_io import load_model

        return load_model
    if name == "VideoAnswerer":
        from redvillm.answerer import VideoAnswerer

        return VideoAnswerer
    raise AttributeError(f"module 'redvillm' has no attribute {name!r}")
