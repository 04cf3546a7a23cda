"""Training pieces beyond the default model: the EMA's maths, the paper's preset, additive conditioning and the
frozen prompt encoder, each doing what its name says."""

import math

import pytest
import torch

from dimba.training.callbacks import EMA, ema_update
from tests.helpers import CONFIGS, ckpt_dir, dimba_in_process, fit_args, no_trainer, tiny_dimba


def test_ema_warms_up_then_decays_at_its_rate():
    """decay_k = min(decay, (1 + k) / (10 + k)) at update k: the first updates follow the weights closely (k = 0
    moves 90% of the way), later ones at the configured rate."""
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    expected = 0.0
    for k in range(30):
        d = min(0.9, (1 + k) / (10 + k))
        expected = d * expected + (1 - d)
        ema_update(averaged, current, torch.tensor(k), decay=0.9)
        torch.testing.assert_close(averaged[0], torch.full((3,), expected))
        if k == 0:
            assert expected == pytest.approx(0.9)
    avg = [torch.zeros(1)]
    ema_update(avg, [torch.ones(1)], torch.tensor(0), decay=0.9, warmup=False)
    torch.testing.assert_close(avg[0], torch.full((1,), 0.1))
    assert isinstance(EMA(decay=0.5), EMA)


def test_the_paper_preset_regresses_x0_with_mse_only(workdir, tmp_path):
    """configs/model/paper.yaml trains (through the CLI) a model with raw embeddings, direct x0, no
    self-conditioning, uniform t, and a loss that is the MSE alone."""
    result = dimba_in_process(*fit_args(tmp_path, "paper", "--model", CONFIGS / "model" / "paper.yaml",
                                        "--data.source", workdir / "corpus"))
    assert result.returncode == 0, result.stderr[-3000:]
    import dimba
    model = dimba.load(ckpt_dir(tmp_path, "paper") / "last.ckpt", device="cpu")
    assert model.warp is None and not model.net.self_conditioning and not model.net.embed_norm
    batch = torch.randint(0, model.vocab_size, (2, 16))
    torch.manual_seed(0)
    out = model.loss(batch)
    torch.testing.assert_close(out.total, out.metrics["mse"])
    x_t, t = torch.randn(1, 4, model.denoiser_config.d_embed), torch.full((1,), 0.5)
    tokens, mask = torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool)
    logits, x0_hat = model.net(x_t, t, tokens, mask)
    assert not torch.allclose(x0_hat, torch.softmax(logits, -1) @ model.net.embedding_table())


def test_additive_conditioning_and_the_frozen_prompt_encoder():
    model = no_trainer(tiny_dimba(denoiser=dict(conditioning="additive", prompt_encoder="frozen")))
    block = model.net.blocks[0]
    assert block.conditioning == "additive" and block.modulation.out_features == model.net_config.d_model
    frozen = {k: v.clone() for k, v in model.net.prompt_encoder.mlp.state_dict().items()}
    others = {k: v.clone() for k, v in model.net.in_proj.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        loss = model.training_step(torch.randint(0, 40, (4, 16)), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(loss.item())
    for k, v in model.net.prompt_encoder.mlp.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert any(not torch.equal(v, others[k]) for k, v in model.net.in_proj.state_dict().items())
    # Additive conditioning reaches the output once trained: the prompt changes the logits.
    tokens = torch.randint(0, 40, (1, 16))
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, :4] = True
    x, t = torch.randn(1, 16, 8), torch.full((1,), 0.5)
    other = tokens.clone()
    other[:, 0] = (tokens[:, 0] + 1) % 40
    assert not torch.allclose(model.net(x, t, tokens, mask)[0], model.net(x, t, other, mask)[0])


def test_the_sample_logger_writes_what_fits_the_context(trained):
    """Its 64 new tokens do not fit a 32-token model after a prompt: it logs shorter samples instead of stopping the
    run at step 500 (which it did once generate() checked lengths)."""
    from types import SimpleNamespace

    import dimba
    from dimba.training.callbacks import SampleLogger

    model = dimba.load(trained, device="cpu")
    logged = []
    experiment = SimpleNamespace(add_text=lambda tag, text, global_step: logged.append((tag, text, global_step)))
    trainer = SimpleNamespace(global_step=500, logger=SimpleNamespace(experiment=experiment))
    SampleLogger(every_n_steps=500, length=64, steps=2).on_train_batch_end(trainer, model, None, None, 0)
    assert len(logged) == 1 and logged[0][0] == "samples" and logged[0][2] == 500
    assert logged[0][1].count("**") == 6  # the three prompts, each with its completion
    SampleLogger(every_n_steps=500, prompts=("x " * 40,)).on_train_batch_end(trainer, model, None, None, 0)
    assert len(logged) == 1  # no room after this prompt: nothing sampled, nothing logged
