"""The Python API (`dimba.load(...).complete(...)`), export folders laid out for the Hugging Face Hub, and
checkpoints written by earlier versions."""

import json
import shutil

import pytest
import torch

import dimba
from dimba.diffusion.config import DiffusionConfig
from dimba.errors import ConfigError, DimbaError
from dimba.models.config import MambaConfig
from dimba.sampling import SamplingConfig
from dimba.training.checkpoint import load_for_inference, read_checkpoint, upgrade_hparams
from tests.helpers import REPO, assert_clean_failure, dimba_in_process

OLD = REPO / "tests" / "fixtures" / "main_a92ad64"


def test_the_readme_python_example_runs_on_a_checkpoint_and_an_export_of_each_kind(trained, trained_ar, tmp_path):
    for ckpt in (trained, trained_ar):
        folder = tmp_path / ckpt.parents[2].name
        assert dimba_in_process("export", "--ckpt_path", ckpt, "--out_dir", folder).returncode == 0
        for path in (ckpt, folder):
            model = dimba.load(path, device="cpu")
            texts = model.complete(["The king", "Thou"], length=6, seed=1)
            assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
            assert model.complete("The king", length=6, seed=1) == texts[0]  # one string in, one out
            # Same seed, same example index: the same text, whatever the batch.
            assert model.complete(["The king", "Thou"], length=6, seed=1, batch_size=1) == texts


def test_complete_refuses_what_it_cannot_do(trained, trained_ar):
    ar = dimba.load(trained_ar, device="cpu")
    with pytest.raises(ConfigError, match="cannot honour the sampling setting.*guidance=3.0"):
        ar.complete("The king", length=4, guidance=3.0)
    model = dimba.load(trained, device="cpu")
    with pytest.raises(ConfigError, match="unknown sampling option.*stepz"):
        model.complete("The king", length=4, stepz=3)
    with pytest.raises(ConfigError, match="nothing to generate"):
        model.complete("The king " * 40)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        model.generate([[10**6]], 3)


def test_generate_is_one_interface(trained, trained_ar):
    """Every kind: generate(prompts, gen_len, SamplingConfig) -> gen_len ids per prompt, with on_step reports."""
    for path in (trained, trained_ar):
        model = load_for_inference(path, "cpu")
        steps = []
        out = model.generate([[5, 6], []], 4, SamplingConfig(seed=0),
                             on_step=lambda i, g, steps=steps: steps.append(g.shape))
        assert [len(c) for c in out] == [4, 4] and steps and all(s == (2, 4) for s in steps)


def test_export_folder_is_a_hub_repository_with_a_model_card(trained, tmp_path):
    """A ready time warp in the checkpoint first, so that losing it on the way fails the round trip."""
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    t = torch.rand(8192, dtype=torch.float64)
    ckpt["time_warp"].update(t=t, loss=torch.sigmoid((t - 0.8) * 30) * 5, count=8192)
    ckpt["validation"] = {"val/loss": 3.25}
    ready = tmp_path / "ready.ckpt"
    torch.save(ckpt, ready)
    folder = tmp_path / "hub"
    result = dimba_in_process("export", "--ckpt_path", ready, "--out_dir", folder)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                        "tokenizer.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "dimba" and config["class_path"] == "dimba.training.dimba_lm.DimbaLM"
    assert config["training"]["global_step"] == ckpt["global_step"] and (folder / "config.json").stat().st_size < 20_000
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: dimba") and "| val/loss | 3.25 |" in card
    assert f"parameters: {load_for_inference(ready, 'cpu').num_parameters():,}" in card
    assert f"optimiser steps: {ckpt['global_step']}" in card and "dimba.load(" in card
    a, b = load_for_inference(ready, "cpu"), load_for_inference(folder, "cpu")
    assert a.warp.ready and b.warp.ready
    u = torch.linspace(0, 1, 9, dtype=torch.float64)
    torch.testing.assert_close(b.warp.warp(u), a.warp.warp(u))
    cfg = SamplingConfig(steps=3, seed=7)
    assert a.generate([[3, 4]], 5, cfg) == b.generate([[3, 4]], 5, cfg)
    again = dimba_in_process("export", "--ckpt_path", ready, "--out_dir", folder)
    assert_clean_failure(again, "not empty")


def test_checkpoints_of_a92ad64_load_and_compute_what_that_code_computed():
    """Flat hyper-parameters and old class paths are translated (tests/fixtures/main_a92ad64/README.md):
    the rebuilt networks give the old code's outputs on the same inputs."""
    ref = torch.load(OLD / "reference_outputs.pt", weights_only=True)
    old = torch.load(OLD / "dimba.ckpt", weights_only=True)["hyper_parameters"]
    assert old["_class_path"] == "dimba.lit_module.DimbaLM" and "d_model" in old
    for path in (OLD / "dimba.ckpt", OLD / "dimba_export"):
        model = dimba.load(path, device="cpu")
        assert model.denoiser_config.d_embed == 8 and model.net_config.d_model == 16
        logits, _ = model.net(ref["x_t"], ref["t"], ref["tokens"], ref["prompt_mask"])
        torch.testing.assert_close(logits, ref["dimba_logits"], rtol=1e-5, atol=1e-5)
        assert model.complete("The king", length=3, steps=2)
    ar = dimba.load(OLD / "ar.ckpt", device="cpu")
    torch.testing.assert_close(ar.net(ref["tokens"]), ref["ar_logits"], rtol=1e-5, atol=1e-5)
    result = dimba_in_process("predict", "--ckpt_path", OLD / "ar.ckpt", "--prompt", "The king", "--length", 3)
    assert result.returncode == 0 and result.stdout.startswith("The king"), result.stderr


def test_resuming_fit_from_a_checkpoint_of_a92ad64(workdir, tmp_path):
    """LightningCLI rebuilds the model from the checkpoint's hyper-parameters: the old flat ones are translated
    first, and training continues from the old step on the corpus the old run used."""
    from tests.helpers import CONFIGS, ckpt_dir

    old = OLD / "dimba.ckpt"
    args = ["fit", "--config", CONFIGS / "base.yaml", "--config", CONFIGS / "tiny.yaml", "--data.source",
            workdir / "corpus", "--data.tokenizer_vocab_size", 260, "--data.seq_len", 16, "--trainer.max_steps", 5,
            "--trainer.default_root_dir", tmp_path, "--trainer.logger.init_args.save_dir", tmp_path, "--ckpt_path", old]
    result = dimba_in_process(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(ckpt_dir(tmp_path, "") / "last.ckpt", weights_only=True)
    hparams = resumed["hyper_parameters"]
    assert resumed["global_step"] == 5 and hparams["denoiser"]["d_embed"] == 8
    # Settings added since are the old code's (Gaussian, tied head), not base.yaml's (hybrid, untied).
    assert hparams["_class_path"] == "dimba.training.dimba_lm.DimbaLM" and hparams["denoiser"]["head"] == "tied"
    assert hparams["time_warp"]["enabled"] and not hparams["denoiser"]["wide_input"]


def as_version_02(hp: dict, corruption: str) -> dict:
    """Today's hyper-parameters of a DIMBA as version 0.2 wrote them: one class with `diffusion.corruption`, the time
    warp inside `diffusion`, and the settings 0.3 removed at their defaults."""
    hp = {k: dict(v) if isinstance(v, dict) else v for k, v in hp.items()}
    warp = hp.pop("time_warp", {"enabled": False, "window": 8192})
    hp["_class_path"] = "dimba.training.dimba_lm.DimbaLM"
    hp["diffusion"].update(corruption=corruption, time_warp=warp["enabled"], warp_window=warp["window"],
                           latent_input="raw")
    hp["denoiser"]["combine"] = "sum"
    return hp


def test_a_checkpoint_from_before_an_option_existed_resumes_with_the_old_behaviour(trained, workdir, tmp_path):
    """A checkpoint of 0.2's layout written before `skip_logits`/`head`/`wide_input` existed (the Gaussian model's
    era), resumed with the default config (the hybrid, untied, wide): it stays what it was."""
    from tests.helpers import CONFIGS, ckpt_dir

    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    hp = as_version_02(ckpt["hyper_parameters"], "gaussian")
    for group, name in (("diffusion", "corruption"), ("diffusion", "skip_logits"), ("denoiser", "head"),
                        ("denoiser", "wide_input")):
        del hp[group][name]
    ckpt["hyper_parameters"] = hp
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    steps = ckpt["global_step"] + 2
    args = ["fit", "--config", CONFIGS / "base.yaml", "--config", CONFIGS / "tiny.yaml", "--data.source",
            workdir / "corpus", "--trainer.max_steps", steps, "--trainer.default_root_dir", tmp_path,
            "--trainer.logger.init_args.save_dir", tmp_path, "--ckpt_path", old]
    result = dimba_in_process(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(ckpt_dir(tmp_path, "") / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == steps
    assert resumed["hyper_parameters"]["_class_path"] == "dimba.training.dimba_lm.DimbaLM"
    assert resumed["hyper_parameters"]["denoiser"]["head"] == "tied"
    assert resumed["hyper_parameters"]["time_warp"]["enabled"]


def test_a_hybrid_checkpoint_of_version_02_loads_as_the_hybrid_type(trained_hybrid, tmp_path):
    """0.2's hybrid was DimbaLM with diffusion.corruption: hybrid: it loads as HybridLM and samples what today's
    checkpoint of the same weights samples; settings removed since are refused by name unless at their default."""
    ckpt = torch.load(trained_hybrid, map_location="cpu", weights_only=True)
    old = tmp_path / "hybrid_02.ckpt"
    torch.save({**ckpt, "hyper_parameters": as_version_02(ckpt["hyper_parameters"], "hybrid")}, old)
    a, b = dimba.load(trained_hybrid, device="cpu"), dimba.load(old, device="cpu")
    assert type(b).__name__ == "HybridLM" and b.hparams == a.hparams
    assert b.complete("The king", length=5, steps=3, seed=2) == a.complete("The king", length=5, steps=3, seed=2)
    for group, name, value in (("diffusion", "latent_input", "posterior"), ("denoiser", "combine", "concat")):
        hp = as_version_02(ckpt["hyper_parameters"], "hybrid")
        hp[group][name] = value
        torch.save({**ckpt, "hyper_parameters": hp}, old)
        with pytest.raises(DimbaError, match=f"sets {group}.{name}: {value}, a setting removed in version 0.3"):
            dimba.load(old, device="cpu")


def test_unknown_or_broken_checkpoints_are_refused_in_one_line(trained, tmp_path):
    hp = upgrade_hparams({"_class_path": "dimba.lit_module.DimbaLM", "d_model": 16, "vocab_size": 9})
    assert hp["_class_path"] == "dimba.training.dimba_lm.DimbaLM" and hp["vocab_size"] == 9
    # What the checkpoint does not name takes the class's defaults (the behaviour of the code that wrote it).
    assert hp["net"] == {**MambaConfig().to_dict(), "d_model": 16} and hp["diffusion"] == DiffusionConfig().to_dict()
    with pytest.raises(DimbaError, match="settings this version does not know: warp_speed"):
        upgrade_hparams({"_class_path": "dimba.lit_ar.ARLM", "warp_speed": 9})
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "os.system"
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(DimbaError, match="not a model kind of this version"):
        load_for_inference(evil, "cpu")
    folder = tmp_path / "half_export"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    for name in ("model.safetensors", "tokenizer.json"):
        (folder / name).write_text("x")
    with pytest.raises(DimbaError, match="unreadable export"):
        read_checkpoint(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    assert_clean_failure(dimba_in_process("predict", "--ckpt_path", folder), "not a DIMBA export folder")
    assert_clean_failure(dimba_in_process("predict", "--ckpt_path", trained, "--device", "nonsense"), "device")
    if not torch.cuda.is_available():
        assert_clean_failure(dimba_in_process("predict", "--ckpt_path", trained, "--device", "cuda"), "no CUDA GPU")


def test_the_readme_python_block_runs_as_written(trained):
    """The README's Python example, with its checkpoint path pointed at a freshly trained one (and a length that
    fits its context)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "dimba.load(" in block and ".complete(" in block and len(block.strip().splitlines()) <= 5
    printed = []
    assert "length=48" in block  # the tiny checkpoint's context is 32 tokens: a shorter completion
    exec(block.replace("runs/base/checkpoints/last.ckpt", str(trained)).replace("length=48", "length=8"),
         {"print": printed.append})
    assert len(printed) == 1 and len(printed[0]) == 2 and all(isinstance(t, str) for t in printed[0])
