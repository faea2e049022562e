"""Shared CLIP machinery (backbones, data, teacher caches, assets); imports neither kdpl nor gcd."""
