"""How sharp a diffusers U-Net's self-attentions are, and a knob to make them sharper.

The int8 attention (UNet.attention = "int8") rounds q and k to int8, so its error on the logits
grows with their magnitude: a model whose softmax rows are near-uniform (diffusers' random
initialisation) hides what a trained checkpoint's peaked rows would show. No trained weights can
be downloaded here, so bench/q8_fidelity_real.py --qk-scale stands in for them: every attention's
to_q and to_k weights times s (the logits times s^2, the rest of the model unchanged), and this
module measures the sharpness that results, on the diffusers side:

  * mean over query rows of the largest softmax probability (uniform over L keys: 1/L; one-hot: 1);
  * mean row entropy over log(L) (uniform: 1; one-hot: 0);
  * the standard deviation of a row's logits (q.k * scale), averaged over rows.

Only self-attentions (no encoder_hidden_states) are measured, grouped by their number of keys;
a sample of query rows per call keeps the cost small next to the forward pass itself.
"""
from __future__ import annotations

import math
from collections import defaultdict


def scale_qk(model, s: float) -> int:
    """Multiplies every attention's to_q and to_k weights (and biases, where there are) by s;
    returns how many attention modules it changed."""
    import torch
    from diffusers.models.attention_processor import Attention

    n = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, Attention):
                for lin in (mod.to_q, mod.to_k):
                    lin.weight.mul_(s)
                    if lin.bias is not None:
                        lin.bias.mul_(s)
                n += 1
    return n


class Sharpness:
    """Installs a recording wrapper around every attention processor of `model`; `summary()` gives
    {keys: (mean max prob, mean entropy / log(keys), mean logit std, rows sampled)}."""

    def __init__(self, model, rows: int = 256):
        from diffusers.models.attention_processor import Attention

        self.rows = rows
        self.sums = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
        for mod in model.modules():
            if isinstance(mod, Attention):
                mod.set_processor(_Recording(mod.processor, self))

    def record(self, attn, hidden_states):
        import torch

        with torch.no_grad():
            B, L, _ = hidden_states.shape
            h = attn.heads
            # a fixed, evenly spaced sample of query rows (every row at small sizes)
            idx = torch.linspace(0, L - 1, min(L, self.rows)).long()
            q = attn.to_q(hidden_states[:, idx]).float()
            k = attn.to_k(hidden_states).float()
            d = q.shape[-1] // h
            q = q.view(B, -1, h, d).transpose(1, 2)                # [B, h, rows, d]
            k = k.view(B, L, h, d).transpose(1, 2)                 # [B, h, L, d]
            logits = (q @ k.transpose(-1, -2)) * attn.scale        # [B, h, rows, L]
            p = torch.softmax(logits, dim=-1)
            ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1) / math.log(L)
            acc = self.sums[L]
            acc[0] += float(p.amax(-1).sum())
            acc[1] += float(ent.sum())
            acc[2] += float(logits.std(-1).sum())
            acc[3] += p.shape[0] * p.shape[1] * p.shape[2]

    def summary(self) -> dict:
        return {L: (a[0] / a[3], a[1] / a[3], a[2] / a[3], a[3]) for L, a in sorted(self.sums.items(), reverse=True)}

    def describe(self) -> str:
        return "; ".join(f"{L} keys: max p {mp:.3f}, H/logL {h:.3f}, logit std {sd:.2f}"
                         for L, (mp, h, sd, _) in self.summary().items())


class _Recording:
    """An attention processor that records the self-attention's sharpness, then runs the one it wraps."""

    def __init__(self, inner, sink: Sharpness):
        self.inner, self.sink = inner, sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is None and hidden_states.ndim == 3:
            self.sink.record(attn, hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
