"""probe: linear heads on frozen embeddings, fitted for worst-group accuracy.

Stage 1 (``features``) writes embeddings to HDF5; stage 2 (``probe``) fits
linear heads on them with CMA and the usual baselines.
"""

from base import __version__

__all__ = ["__version__"]
