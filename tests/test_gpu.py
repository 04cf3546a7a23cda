"""GPU only (opt in with `make test-gpu`): the torch and CUDA paths of Mamba-2 agree on the same weights.

On a machine with CUDA these tests fail, rather than skip, when mamba-ssm's kernels do not import: a GPU run
that compared nothing must not pass. Without CUDA they are skipped (tests/conftest.py)."""

import pytest
import torch

from dimba.models.kernels import mamba_kernels
from dimba.models.mamba2 import Mamba2

pytestmark = pytest.mark.gpu


def require_kernels():
    assert mamba_kernels() is not None, "mamba-ssm's kernels did not import on this CUDA machine: make install-cuda"

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
    require_kernels()
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
    require_kernels()
    torch.manual_seed(0)
    m = Mamba2(128, d_state=32, headdim=32, chunk_size=32, impl="torch").cuda()
    x = torch.randn(2, 70, 128, device="cuda")
    _, s_t = m.prefill(x)
    m.impl = "cuda"
    _, s_c = m.prefill(x)
    torch.testing.assert_close(s_c.ssm, s_t.ssm, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(s_c.conv, s_t.conv)


def denoise_once(model, device):
    """The denoiser's logits for fixed inputs (made on the CPU, so both devices see the same numbers)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.hparams.vocab_size, (2, 32), generator=g)
    x_t = torch.randn(2, 32, model.hparams.denoiser["d_embed"], generator=g)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[:, :5] = True
    with torch.no_grad():
        logits, _ = model.net(x_t.to(device), torch.full((2,), 0.6, device=device), tokens.to(device), mask.to(device))
    return logits.float().cpu()


@pytest.mark.parametrize("train_on,precision", [("cpu", "32-true"), ("gpu", "bf16-mixed")])
def test_checkpoints_move_between_cpu_and_gpu(workdir, train_on, precision):
    """Issue 6: a CPU checkpoint samples on the GPU (CUDA path) and a bf16 GPU checkpoint on the CPU (torch
    path), and both devices compute the same denoiser from it."""
    require_kernels()
    from dimba.sampling import SamplingConfig
    from dimba.training.checkpoint import load_for_inference
    from tests.helpers import ckpt_dir, dimba, fit_args

    name = f"portable_{train_on}"
    result = dimba(*fit_args(workdir, name, "--trainer.accelerator", train_on, "--trainer.precision", precision),
                   cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    path = ckpt_dir(workdir, name) / "last.ckpt"
    on_cpu, on_gpu = load_for_inference(path, "cpu"), load_for_inference(path, "cuda")
    torch.testing.assert_close(denoise_once(on_gpu, "cuda"), denoise_once(on_cpu, "cpu"), rtol=2e-3, atol=2e-3)
    for model in (on_cpu, on_gpu):
        completions = model.generate([[5, 6, 7], []], 8, SamplingConfig(steps=4, seed=0))
        assert [len(c) for c in completions] == [8, 8]


def test_block_diffusion_streams_match_between_paths():
    """Block diffusion on CUDA: the noisy stream (and a prefill continued from a state) passes the carried state to
    mamba-ssm's scan kernel as its initial state; against the torch path on the same weights."""
    require_kernels()
    torch.manual_seed(0)
    m = Mamba2(128, d_state=32, headdim=32, chunk_size=32, impl="torch").cuda()
    clean = torch.randn(2, 64, 128, device="cuda")
    noisy = torch.randn(2 * 4, 16, 128, device="cuda")
    _, state = m.prefill(clean[:, :40])
    cont_t, after_t = m.prefill(clean[:, 40:], state=state)
    streams_t = m.two_stream(clean, noisy, 16)
    m.impl = "cuda"
    cont_c, after_c = m.prefill(clean[:, 40:], state=state)
    streams_c = m.two_stream(clean, noisy, 16)
    tol = dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(cont_c, cont_t, **tol)
    torch.testing.assert_close(after_c.ssm, after_t.ssm, **tol)
    for got, expected in zip(streams_c, streams_t, strict=True):
        torch.testing.assert_close(got, expected, **tol)
