"""Naming tables: every checkpoint spelling -> canonical (diffusers/transformers) names.

One module per scheme (``unet``, ``vae``, ``clip``), the rule engine in ``rules``, routing
in ``engine``, ignorable keys in ``ignore``. See docs/internals.md §3.

    result = canonicalize(source)      # NamingResult(tensors, origin, ignored, unknown)
"""
from .engine import (BARE_ROOTS, COMPONENTS, SINGLE_FILE_PREFIXES, NamingResult, canonicalize,
                     canonicalize_components)
from .ignore import IGNORED_PATTERNS, is_ignored
from .unet import diffusers_unet_to_ldm, ldm_unet_to_diffusers

__all__ = ["canonicalize", "canonicalize_components", "NamingResult", "ldm_unet_to_diffusers",
           "diffusers_unet_to_ldm", "is_ignored", "IGNORED_PATTERNS", "SINGLE_FILE_PREFIXES",
           "BARE_ROOTS", "COMPONENTS"]
