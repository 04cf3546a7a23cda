"""The pure-torch Mamba-2 path against an independent float64 per-step recurrence, and its invariances."""

import importlib
import pkgutil
import sys

import pytest
import torch

import dimba
from dimba.models.bidirectional import BidirectionalMamba2
from dimba.models.mamba2 import Mamba2
from tests.helpers import skip_without_transformers
from tests.mamba2_reference import reference_mamba2

CONFIGS = {
    "base": dict(d_model=32, d_state=8, headdim=8, chunk_size=4),
    "ngroups2": dict(d_model=32, d_state=8, headdim=8, ngroups=2, chunk_size=5),
    "d_ssm_lt_inner": dict(d_model=32, d_state=8, headdim=8, d_ssm=32, chunk_size=4),
    "D_has_hdim": dict(d_model=32, d_state=8, headdim=8, D_has_hdim=True, chunk_size=3),
    "no_rmsnorm": dict(d_model=32, d_state=8, headdim=16, rmsnorm=False, chunk_size=4),
    "norm_before_gate_bias": dict(d_model=24, d_state=4, headdim=12, norm_before_gate=True, bias=True,
                                  chunk_size=7),
    "dt_limit_conv3": dict(d_model=32, d_state=8, headdim=8, d_conv=3, dt_limit=(0.01, 0.05), chunk_size=4),
}


def make(cfg, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = Mamba2(**cfg, impl="torch").to(dtype)
    # Non-trivial D, norm weights and conv so that every term of the mixer is exercised.
    with torch.no_grad():
        m.D.uniform_(0.5, 1.5)
        if m.rmsnorm:
            m.norm.weight.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("length", [1, 5, 13])
def test_forward_matches_per_step_reference(name, length):
    m = make(CONFIGS[name])
    u = torch.randn(2, length, m.d_model, dtype=torch.float64)
    out, state = m.prefill(u)
    ref_out, ref_state = reference_mamba2(m, u)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(state.ssm.double(), ref_state, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["base", "ngroups2", "d_ssm_lt_inner", "no_rmsnorm"])
def test_gradients_match_reference(name):
    m = make(CONFIGS[name])
    u = torch.randn(2, 9, m.d_model, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 9, m.d_model, dtype=torch.float64)
    (m(u) * weights).sum().backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    grad_u = u.grad.clone()
    m.zero_grad()
    u.grad = None
    (reference_mamba2(m, u)[0] * weights).sum().backward()
    torch.testing.assert_close(grad_u, u.grad, rtol=1e-8, atol=1e-10)
    for k, p in m.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-8, atol=1e-10, msg=f"gradient of {k}")


def test_chunk_size_does_not_change_output():
    m = make(CONFIGS["base"])
    u = torch.randn(3, 37, m.d_model, dtype=torch.float64)
    outs = []
    for chunk in (1, 4, 16, 37, 64):
        m.chunk_size = chunk
        outs.append(m(u))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("name", ["base", "ngroups2", "d_ssm_lt_inner", "D_has_hdim", "no_rmsnorm"])
def test_step_decoding_equals_full_forward(name):
    m = make(CONFIGS[name])
    u = torch.randn(2, 11, m.d_model, dtype=torch.float64)
    full = m(u)
    prompt = 2  # shorter than d_conv: the conv state must be zero-padded
    out, state = m.prefill(u[:, :prompt])
    steps = [out]
    for t in range(prompt, u.shape[1]):
        y, state = m.step(u[:, t], state)
        steps.append(y.unsqueeze(1))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-10)


def test_step_from_empty_state_equals_forward():
    m = make(CONFIGS["base"])
    u = torch.randn(1, 6, m.d_model, dtype=torch.float64)
    state = m.empty_state(1, dtype=torch.float64)
    ys = []
    for t in range(6):
        y, state = m.step(u[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), m(u), rtol=1e-9, atol=1e-10)


def test_bf16_autocast_keeps_scan_in_fp32_and_close(monkeypatch):
    """Under bf16 autocast every tensor the SSD scan receives is fp32 (checked at the call, not by a tolerance
    wider than the difference a bf16 scan would make), and the output stays close to the fp32 one."""
    import dimba.models.mamba2 as mamba2

    m = make(CONFIGS["base"], dtype=torch.float32)
    u = torch.randn(2, 64, m.d_model)
    ref = m(u)
    seen = []
    scan = mamba2.ssd_chunked_scan

    def spy(*args, **kwargs):
        seen.append({t.dtype for t in args if torch.is_tensor(t)})
        return scan(*args, **kwargs)

    monkeypatch.setattr(mamba2, "ssd_chunked_scan", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(u)
    assert seen == [{torch.float32}]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 3e-2, rel


@skip_without_transformers
@pytest.mark.parametrize("name,length", [("base", 13), ("base", 1), ("ngroups2", 29)])
def test_matches_the_transformers_mamba2_mixer_on_the_same_weights(name, length):
    """An outside implementation of the same function: transformers' plain-PyTorch Mamba2Mixer, loaded with our
    state dict (the same parameter names), forward and input gradient."""
    from dimba.cli.bench_mamba2 import transformers_mixer

    config = {k: v for k, v in CONFIGS[name].items() if k != "chunk_size"}
    m = make({**config, "chunk_size": 4}, dtype=torch.float32)
    theirs = transformers_mixer(m)
    u = torch.randn(2, length, m.d_model, requires_grad=True)
    ours_out = m(u)
    ours_out.sum().backward()
    grad = u.grad.clone()
    u.grad = None
    theirs_out = theirs(u)
    theirs_out.sum().backward()
    torch.testing.assert_close(ours_out, theirs_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, u.grad, rtol=1e-4, atol=1e-5)


def test_state_dict_layout_matches_mamba_ssm_spec():
    # Written from mamba-ssm's Mamba2 definition: in_proj emits [z, x, B, C, dt] (2*d_inner + 2*g*n + h),
    # the depthwise conv covers x, B, C; dt_bias, A_log per head; D per head (or per channel).
    for cfg in [dict(d_model=64), dict(d_model=64, d_state=16, ngroups=2, headdim=32, D_has_hdim=True, bias=True),
                dict(d_model=64, d_ssm=64, rmsnorm=False, conv_bias=False)]:
        m = Mamba2(**cfg, impl="torch")
        d_model = cfg["d_model"]
        n, g, hd = cfg.get("d_state", 128), cfg.get("ngroups", 1), cfg.get("headdim", 64)
        d_inner = 2 * d_model
        d_ssm = cfg.get("d_ssm", d_inner)
        h = d_ssm // hd
        conv_dim = d_ssm + 2 * g * n
        expected = {
            "in_proj.weight": (2 * d_inner + 2 * g * n + h, d_model),
            "conv1d.weight": (conv_dim, 1, 4),
            "dt_bias": (h,), "A_log": (h,), "D": (d_ssm if cfg.get("D_has_hdim") else h,),
            "out_proj.weight": (d_model, d_inner),
        }
        if cfg.get("conv_bias", True):
            expected["conv1d.bias"] = (conv_dim,)
        if cfg.get("rmsnorm", True):
            expected["norm.weight"] = (d_ssm,)
        if cfg.get("bias"):
            expected["in_proj.bias"] = (2 * d_inner + 2 * g * n + h,)
            expected["out_proj.bias"] = (d_model,)
        got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        assert got == expected
        Mamba2(**cfg, impl="torch").load_state_dict(m.state_dict(), strict=True)


def test_initialisation_follows_mamba_ssm():
    m = Mamba2(64, headdim=8, dt_min=0.002, dt_max=0.05, impl="torch")
    A = torch.exp(m.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert ((dt >= 0.002 * (1 - 1e-5)) & (dt <= 0.05 * (1 + 1e-5))).all()
    assert torch.equal(m.D, torch.ones_like(m.D))
    flagged = {k for k, p in m.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert flagged == {"A_log", "D", "dt_bias"}


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="impl"):
        Mamba2(32, impl="triton")
    with pytest.raises(ValueError, match="multiple of headdim"):
        Mamba2(32, headdim=24)
    with pytest.raises(ValueError, match="divisible by ngroups"):
        Mamba2(32, headdim=16, ngroups=3)


def test_cuda_impl_on_cpu_says_why():
    m = Mamba2(32, d_state=8, headdim=8, impl="cuda")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        m(torch.randn(1, 4, 32))


def test_auto_impl_uses_torch_on_cpu():
    m = Mamba2(32, d_state=8, headdim=8, impl="auto")
    assert m.resolve_impl(torch.randn(1, 4, 32)) == "torch"


def test_bidirectional_output_depends_on_both_sides():
    torch.manual_seed(0)
    m = BidirectionalMamba2(32, d_state=8, headdim=8, chunk_size=4, impl="torch").double()
    assert m.forward_mixer.in_proj.weight.data_ptr() != m.backward_mixer.in_proj.weight.data_ptr()
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    base = m(x)
    j = 5
    x2 = x.clone()
    x2[:, j] += 1.0
    diff = (m(x2) - base).abs().sum(-1)[0]  # (L,)
    assert diff[:j].min() > 1e-6, "positions before j must see token j (backward mixer)"
    assert diff[j + 1:].min() > 1e-6, "positions after j must see token j (forward mixer)"


def test_every_module_imports_without_cuda_packages():
    assert "mamba_ssm" not in sys.modules or sys.modules["mamba_ssm"] is not None
    for info in pkgutil.walk_packages(dimba.__path__, "dimba."):
        if info.name != "dimba.__main__":  # the entry point: importing it runs the CLI
            importlib.import_module(info.name)
    assert "mamba_ssm" not in sys.modules, "a dimba module imported mamba_ssm at import time"


def test_loglog_slope_of_known_powers():
    from dimba.eval.timing import loglog_slope
    xs = [256, 512, 1024, 2048]
    assert loglog_slope(xs, [3 * x for x in xs]) == pytest.approx(1.0)
    assert loglog_slope(xs, [x * x for x in xs]) == pytest.approx(2.0)
    assert loglog_slope([256], [0.1]) is None and loglog_slope([256, 256], [0.1, 0.2]) is None  # no slope to fit


def test_bench_mamba2_runs_end_to_end_as_a_verb(capsys):
    from dimba.cli import main
    main(["bench-mamba2", "--quick", "true"])
    out = capsys.readouterr().out
    assert "| fwd | fp32 |" in out and "log-log slope" in out
