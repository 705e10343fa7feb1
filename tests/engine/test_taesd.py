"""The tiny autoencoder (TAESD) against diffusers' AutoencoderTiny in float32: decode and encode,
the diffusers folder naming and the original split files (taesd_decoder / taesd_encoder)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdcpp import errors  # noqa: E402
from sdcpp.engine.taesd import TinyVAE, canonical_names  # noqa: E402
from sdcpp.engine.weights import open_device  # noqa: E402
from fixtures.devices import TEST_DEVICE, tol as device_tol  # noqa: E402

pytestmark = pytest.mark.device  # part of the device suite (SDCPP_TEST_DEVICE, tools/ci_vulkan.sh)

TOL = device_tol(1e-4)
SMALL = dict(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def tiny():
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    m = AutoencoderTiny(**SMALL).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def ours(tiny):
    sd = {k: v.numpy() for k, v in tiny.state_dict().items()}
    return TinyVAE.from_tensors(open_device(TEST_DEVICE, 2), sd, dict(tiny.config))


def test_decode_matches_diffusers(tiny, ours):
    z = np.random.default_rng(1).standard_normal((2, 4, 9, 7)).astype(np.float32) * 2
    with torch.no_grad():
        ref = tiny.decode(torch.from_numpy(z)).sample.numpy()
    out = ours.decode(z)
    assert out.shape == ref.shape == (2, 3, 72, 56)
    assert rel(out, ref) <= TOL, rel(out, ref)


def test_encode_matches_diffusers(tiny, ours):
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 48, 40)).astype(np.float32)
    with torch.no_grad():
        ref = tiny.encode(torch.from_numpy(x)).latents.numpy()
    out = ours.encode(x)
    assert out.shape == ref.shape == (1, 4, 6, 5)
    assert rel(out, ref) <= TOL, rel(out, ref)


def test_original_split_files_are_renamed(tiny):
    """taesd_decoder.safetensors numbers its Sequential from the Clamp (index 0)."""
    sd = {k: v.numpy() for k, v in tiny.state_dict().items()}
    dec = {f"{int(k.split('.')[2]) + 1}.{k.split('.', 3)[3]}": v for k, v in sd.items() if k.startswith("decoder.")}
    enc = {k[len("encoder.layers."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    merged = {**canonical_names(dec, "decoder"), **canonical_names(enc, "encoder")}
    assert merged.keys() == sd.keys()
    with pytest.raises(errors.UnknownArchitectureError):
        canonical_names(dec)


def test_decoder_only_model_refuses_encode(tiny):
    sd = {k: v.numpy() for k, v in tiny.state_dict().items() if k.startswith("decoder.")}
    dec_only = TinyVAE.from_tensors(open_device(TEST_DEVICE, 2), sd, dict(tiny.config))
    assert dec_only.has_decoder and not dec_only.has_encoder
    with pytest.raises(errors.SdcppError, match="no encoder"):
        dec_only.encode(np.zeros((1, 3, 16, 16), np.float32))
