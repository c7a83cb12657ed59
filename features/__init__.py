"""Stage 1: datasets, frozen encoders and the HDF5 feature store."""
