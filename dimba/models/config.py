"""Configuration of the networks: the Mamba-2 backbone every network shares, and what each network adds.

Networks are built from these objects (`DimbaDenoiser(net, denoiser, vocab_size)`, `MaskedDenoiser(net,
vocab_size)`, `ARLanguageModel(net, vocab_size)`); the vocabulary comes from the data (the tokenizer). LightningCLI
reads them from YAML as nested keys (`model.init_args.net.d_model`, `model.init_args.denoiser.d_embed`), and
checkpoints store them as plain dicts (`to_dict` / `from_dict`). Every model kind takes the backbone under the same
name, `net`, so a config stacked on another (`--config configs/base.yaml --config configs/ar.yaml`) keeps the shared
sizes it does not set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dimba.config import Config, check, one_of

IMPLS = ("auto", "torch", "cuda")
CONDITIONINGS = ("film", "additive")
PROMPT_ENCODERS = ("mlp", "frozen")
X0_PARAMS = ("softmax", "direct")
HEADS = ("tied", "untied")
_MIXER_FIELDS = ("d_state", "headdim", "expand", "d_conv", "ngroups", "chunk_size", "impl")


@dataclass
class MambaConfig(Config):
    """The residual stack of Mamba-2 blocks, with the mixer's own settings (mamba-ssm's `Mamba2` keywords)."""

    d_model: int = 256  # width of the residual stream
    n_layers: int = 4  # blocks (a bidirectional block holds two mixers)
    mlp_ratio: float = 0.0  # SwiGLU sublayer width / d_model after each mixer (0 = none)
    d_state: int = 64  # SSM state size N per head
    headdim: int = 64  # channels per head; expand * d_model must be a multiple of it
    expand: int = 2  # d_inner = expand * d_model
    d_conv: int = 4  # width of the causal depthwise convolution
    ngroups: int = 1  # groups sharing B and C (heads are split evenly over groups)
    chunk_size: int = 64  # block length of the chunked SSD scan (speed only: the output does not depend on it)
    impl: str = "auto"  # "torch" (any device), "cuda" (mamba-ssm kernels), "auto" (cuda when possible)
    # Block diffusion (bidirectional networks): 0 = every layer sees the whole sequence both ways; k > 0 = the
    # right-to-left mixer only inside blocks of k tokens, the left-to-right one across them (autoregressive across
    # blocks, diffusion inside; generation block by block with the state as the cache). seq_len must be a multiple.
    block_size: int = 0

    def __post_init__(self):
        for name in ("d_model", "n_layers", *_MIXER_FIELDS[:-1]):
            check(getattr(self, name) >= 1, f"net.{name} must be >= 1, got {getattr(self, name)}")
        check(self.mlp_ratio >= 0, f"net.mlp_ratio must be >= 0, got {self.mlp_ratio}")
        check(self.block_size >= 0, f"net.block_size must be >= 0 (0: no blocks), got {self.block_size}")
        one_of("net.impl", self.impl, IMPLS)
        d_inner = self.expand * self.d_model
        check(d_inner % self.headdim == 0, f"expand * d_model ({d_inner}) must be a multiple of net.headdim "
                                           f"({self.headdim})")
        check((d_inner // self.headdim) % self.ngroups == 0,
              f"the number of heads ({d_inner // self.headdim}) must be divisible by net.ngroups ({self.ngroups})")

    def mixer_kwargs(self) -> dict:
        """Keywords of `dimba.models.mamba2.Mamba2` (besides d_model)."""
        return {k: v for k, v in asdict(self).items() if k in _MIXER_FIELDS}


@dataclass
class DenoiserConfig(Config):
    """What the DIMBA denoiser (`dimba.models.denoiser.DimbaDenoiser`) adds to the backbone."""

    d_embed: int = 64  # token embedding size: the space diffusion runs in
    conditioning: str = "film"  # "film" (adaLN-Zero) or "additive" conditioning on (timestep, prompt)
    prompt_encoder: str = "mlp"  # "mlp" (trained) or "frozen" (its random initialisation kept)
    embed_norm: bool = True  # embeddings normalised to norm sqrt(d_embed): unit scale per coordinate
    x0_param: str = "softmax"  # x0_hat = softmax(logits) E ("softmax") or a regression output ("direct")
    self_conditioning: bool = True  # a second input channel carries the previous x0 estimate
    # "tied": logits = h W_out E^T (the paper; rank d_embed, and with embed_norm every token's logit has the
    # same scale, so the token marginal is hard to express); "untied": logits = h W + b from the backbone's
    # width, b the per-token prior. x0_hat stays a point in E's space either way.
    head: str = "tied"
    # Clean tokens (prompt, revealed) also enter through the untied head's rows, a d_model-wide embedding
    # shared with the output as the AR and masked models share theirs; without it a clean token reaches the
    # backbone only as its d_embed-wide point in the diffusion space.
    wide_input: bool = False

    def __post_init__(self):
        check(self.d_embed >= 1, f"denoiser.d_embed must be >= 1, got {self.d_embed}")
        check(not self.wide_input or self.head == "untied", "denoiser.wide_input needs denoiser.head: untied "
                                                              "(its rows are the wide embedding)")
        one_of("denoiser.conditioning", self.conditioning, CONDITIONINGS)
        one_of("denoiser.prompt_encoder", self.prompt_encoder, PROMPT_ENCODERS)
        one_of("denoiser.x0_param", self.x0_param, X0_PARAMS)
        one_of("denoiser.head", self.head, HEADS)
