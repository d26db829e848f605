"""Offline packing of Galaxy Zoo catalogues into tier-split webdataset shards.

Any decision tree (trees.py: gz2-kaggle, gz2, gz-decals, or a YAML file) and any catalogue (the Kaggle
layout, or CSV/Parquet of vote counts or fractions). Imports neither torch nor DALI (packing runs where
torch is not installed; DALI's plain-Python `wds2idx` writes the indexes): the manifest written by `pack`
is the only contract with `gzfast`.
"""
