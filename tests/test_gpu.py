"""GPU only (opt in with `make test-gpu`): the torch and CUDA paths of Mamba-2 agree on the same weights."""

import pytest
import torch

from dimba.models.mamba2 import Mamba2

pytestmark = pytest.mark.gpu

SHAPES = [  # (config, batch, length)
    (dict(d_model=256, d_state=64, headdim=64, chunk_size=64), 2, 300),
    (dict(d_model=128, d_state=32, headdim=32, ngroups=2, chunk_size=32), 3, 97),
    (dict(d_model=128, d_state=32, headdim=32, d_ssm=128, chunk_size=64), 2, 128),
    (dict(d_model=128, d_state=16, headdim=32, rmsnorm=False, D_has_hdim=True, chunk_size=64), 1, 1),
]


def run(module, x, impl, dtype):
    module.impl = impl
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = module(x)
    grad_out = torch.randn_like(out, generator=torch.Generator("cuda").manual_seed(1))
    module.zero_grad()
    (out.float() * grad_out.float()).sum().backward()
    grads = {k: p.grad.detach().clone() for k, p in module.named_parameters()}
    return out.detach().float(), x.grad.detach().float(), grads


@pytest.mark.parametrize("config,batch,length", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_and_cuda_paths_agree(config, batch, length, dtype):
    pytest.importorskip("mamba_ssm")
    torch.manual_seed(0)
    m = Mamba2(**config, impl="torch").cuda()
    x = torch.randn(batch, length, config["d_model"], device="cuda")
    out_t, gx_t, g_t = run(m, x, "torch", dtype)
    out_c, gx_c, g_c = run(m, x, "cuda", dtype)
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp(min=1e-12)).item()
    print(f"{config} {dtype}: out {rel(out_c, out_t):.2e} grad_x {rel(gx_c, gx_t):.2e} "
          + " ".join(f"{k} {rel(g_c[k].float(), g_t[k].float()):.1e}" for k in g_t))
    torch.testing.assert_close(out_c, out_t, **tol)
    torch.testing.assert_close(gx_c, gx_t, **tol)
    for k in g_t:
        assert rel(g_c[k].float(), g_t[k].float()) < (1e-2 if dtype == torch.float32 else 8e-2), k


def test_prefill_state_matches_between_paths():
    pytest.importorskip("mamba_ssm")
    torch.manual_seed(0)
    m = Mamba2(128, d_state=32, headdim=32, chunk_size=32, impl="torch").cuda()
    x = torch.randn(2, 70, 128, device="cuda")
    _, s_t = m.prefill(x)
    m.impl = "cuda"
    _, s_c = m.prefill(x)
    torch.testing.assert_close(s_c.ssm, s_t.ssm, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(s_c.conv, s_t.conv)
