"""The low-level engine API: numpy in, numpy out (docs/engine.md).

Submodules: ``weights`` (devices and weight stores), ``text`` (CLIP text encoders),
``unet`` (the config-driven U-Net), ``vae`` (VAE encode/decode), ``sampling``.
"""
