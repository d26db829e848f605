"""Offline packing of Galaxy Zoo 2 into tier-split webdataset shards.

Imports neither torch nor DALI: the manifest written by `pack` is the only contract with `gzfast`.
"""
