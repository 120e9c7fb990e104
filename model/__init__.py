"""Flax NNX backbones with exact torchvision weights, and the visual signature built on them.

Public API: `model.registry` (ARCHS, build), `model.signature` (SignatureNet, set_mode),
`model.weights` (save/load), `model.convert` (torchvision state_dicts), `model.embed` (collections).
"""
