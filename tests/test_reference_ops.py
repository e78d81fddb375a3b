"""The reference's building blocks against torch's own operators (torch is an oracle here only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voxtral_edge.export import reference as R

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def close(ours, theirs, tol=1e-5):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * max(1.0, float(np.abs(theirs).max())))


def test_rms_norm():
    x, w = randn(4, 9), randn(9)
    close(R.rms_norm(x, w, 1e-5), F.rms_norm(torch.from_numpy(x), (9,), torch.from_numpy(w), eps=1e-5))


def test_rope_is_mistral_complex_rotation_of_interleaved_pairs():
    x = randn(5, 3, 8)
    positions = np.arange(7, 12)
    # mistral-inference: freqs_cis = polar(1, outer(t, 1/theta^(2i/d))); x as complex pairs (x[2i], x[2i+1])
    freqs = 1.0 / (1e6 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    cis = torch.polar(torch.ones(5, 4, dtype=torch.float64), torch.outer(torch.from_numpy(positions).double(), freqs))
    xc = torch.view_as_complex(torch.from_numpy(x).double().reshape(5, 3, 4, 2))
    expected = torch.view_as_real(xc * cis[:, None, :]).reshape(5, 3, 8)
    close(R.rope(x, positions, 1e6), expected.float())


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention(causal):
    q, k, v = randn(6, 4, 5), randn(6, 2, 5), randn(6, 2, 5)
    bias = np.triu(np.full((6, 6), -np.inf, np.float32), 1) if causal else None
    tq, tk, tv = (torch.from_numpy(a).transpose(0, 1) for a in (q, k, v))
    expected = F.scaled_dot_product_attention(tq, tk.repeat_interleave(2, 0), tv.repeat_interleave(2, 0),
                                              is_causal=causal)
    close(R.attention(q, k, v, bias), expected.transpose(0, 1).reshape(6, 20))


def test_alibi_slopes_start_at_one():
    np.testing.assert_array_equal(R.alibi_slopes(8), np.array([2.0 ** -i for i in range(8)], np.float32))
    assert R.alibi_slopes(4)[1] == 2.0 ** -2


@pytest.mark.parametrize("transpose", [False, True])
def test_weight_norm_matches_torch_parametrization_names(transpose):
    conv = (torch.nn.ConvTranspose1d(6, 4, 3, bias=False) if transpose else torch.nn.Conv1d(6, 4, 3, bias=False))
    conv = torch.nn.utils.parametrizations.weight_norm(conv)
    params = dict(conv.named_parameters())
    # the checkpoint stores exactly these two names: g is original0, v is original1
    g = params["parametrizations.weight.original0"].detach().numpy().copy()
    v = params["parametrizations.weight.original1"].detach().numpy().copy()
    with torch.no_grad():
        params["parametrizations.weight.original0"].mul_(1.7)
    close(R.weight_norm(g * 1.7, v), conv.weight)


def _vllm_pad1d(x, left, right, mode):
    """The reference server's pad1d (reflect on a short input pads zeros on the right first)."""
    length = x.shape[-1]
    if mode == "reflect" and length <= max(left, right):
        extra = max(left, right) - length + 1
        padded = F.pad(F.pad(x, (0, extra)), (left, right), mode)
        return padded[..., : padded.shape[-1] - extra]
    return F.pad(x, (left, right), mode)


@pytest.mark.parametrize("mode, stride, length", [("replicate", 1, 9), ("reflect", 1, 9), ("reflect", 1, 3),
                                                  ("replicate", 2, 9), ("reflect", 2, 10)])
def test_causal_conv1d(mode, stride, length):
    x, w = randn(5, length), randn(4, 5, 7 if mode == "reflect" else 3)
    kernel = w.shape[-1]
    pad = kernel - stride
    frames = (length - kernel + pad) / stride + 1
    extra = (math.ceil(frames) - 1) * stride + (kernel - pad) - length
    padded = _vllm_pad1d(torch.from_numpy(x)[None], pad, extra, mode)
    close(R.causal_conv1d(x, w, stride, mode), F.conv1d(padded, torch.from_numpy(w), stride=stride)[0])


def test_causal_conv_transpose1d_trims_the_future():
    x, w = randn(5, 6), randn(5, 3, 4)
    full = F.conv_transpose1d(torch.from_numpy(x)[None], torch.from_numpy(w), stride=2)[0]
    close(R.causal_conv_transpose1d(x, w, 2), full[:, : full.shape[-1] - 2])


def test_time_embedding():
    d, t = 12, 0.4285714
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(d // 2).float() / (d // 2))
    emb = torch.einsum("bi,j->bj", torch.tensor([[t]]), inv_freq)
    close(R.time_embedding(t, d), torch.cat([emb.cos(), emb.sin()], -1)[0])
