"""Keys that are never an error and never mapped (docs/internals.md §3, ARCHITECTURES.md §2.1).

Matched (``re.search``) against the full key as stored (single files) or against
``component/key`` (diffusers folders).
"""
from __future__ import annotations

import re

IGNORED_PATTERNS = [re.compile(p) for p in (
    r"^model_ema\.",                                     # EMA copies (flattened names), decay, num_updates
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod"
    r"|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod"
    r"|posterior_\w+|lvlb_weights)$",                     # DDPM schedule buffers
    r"(^|[./])position_ids$",                            # CLIP position-id buffers (int64 0..76)
    r"(^|[./])logit_scale$",                             # CLIP/OpenCLIP contrastive temperature
    r"(^|[./])attn_mask$",                               # OpenCLIP causal-mask buffer
    r"^embedding_manager\.",                             # textual-inversion manager of old trainers
    r"^denoiser\.sigmas$",
    r"(^|[./])time_embedding\.cond_proj\.",              # LCM guidance embedding (full LCM U-Nets)
    r"^(ztsnr|v_pred)$",                                 # SDXL markers (v_pred: read by sdcpp.arch)
    r"^edm_",                                            # Playground / CosXL markers
)]


def is_ignored(key: str) -> bool:
    return any(p.search(key) for p in IGNORED_PATTERNS)
