"""Stage one: decode videos, run the frozen vision encoder, cache frame tokens to HDF5."""
