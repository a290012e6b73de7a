"""Datasets: cards, download, extraction, the HDF5 store and the episode sampler."""
