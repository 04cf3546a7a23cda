"""Generation quality on held-out prompts, judged by a separate autoregressive model.

For each sampling setting: gen-PPL (the judge's perplexity of the completion given the prompt), unigram
entropy, distinct-1..4 and the repeated-4-gram rate, plus latency. The real continuation (the floor) and tokens
drawn at random by corpus frequency (the ceiling) are scored the same way. Works for every model kind: the
settings a model cannot honour are left out of its grid.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from dimba.errors import DimbaError
from dimba.eval.metrics import diversity
from dimba.sampling import SamplingConfig
from dimba.training.ar_lm import perplexity
from dimba.training.base import LanguageModelBase

# Where match_entropy searches each knob (entropy rises with all of them).
KNOB_RANGES = {"temperature": (0.3, 1.5), "x0_temperature": (0.3, 1.5), "top_p": (0.3, 1.0)}
COLUMNS = ["label", "gen_ppl", "entropy_bits", "distinct_1", "distinct_2", "distinct_3", "distinct_4", "repeat_4",
           "seconds_per_sample", "latency_b1_s"]
INFILL_COLUMNS = ["label", "gen_ppl", "fill_nats", "after_gap_nats", "gap_token_match"]
LONG_COLUMNS = ["label", "length", "first_gen_ppl", "first_entropy_bits", "last_gen_ppl", "last_entropy_bits",
                "ended_early", "seconds_per_sample"]


def held_out_prompts(tokenizer, source: str, prompt_len: int, gen_len: int, n: int):
    """(prompts, continuations, unigram frequencies of the training split) from the corpus' validation split,
    tokenised with the model's own tokenizer."""
    import tempfile

    from dimba.data.datamodule import TextDataModule

    with tempfile.TemporaryDirectory() as tmp:  # the data module reads a tokenizer file; nothing of ours is touched
        tok_path = Path(tmp) / "tokenizer.json"
        tokenizer.save(tok_path)
        dm = TextDataModule(source=source, tokenizer_path=str(tok_path), seq_len=prompt_len + gen_len)
        dm.setup("fit")
    blocks = np.asarray(dm.val_set.blocks[:n])
    if len(blocks) < n:
        raise DimbaError(f"the validation split has only {len(blocks)} blocks of {prompt_len + gen_len} tokens")
    freq = np.bincount(np.asarray(dm.train_set.blocks).ravel(), minlength=tokenizer.vocab_size)
    return blocks[:, :prompt_len].tolist(), blocks[:, prompt_len:].tolist(), freq / freq.sum()


def judge_nll(judge: LanguageModelBase, prompts, completions, first: int | None = None) -> tuple[float, int]:
    """Summed judge NLL (nats) of each completion (or of its first `first` tokens) given EOS + its prompt."""
    eos = judge.eos_id
    nll, count = 0.0, 0
    for p, c in zip(prompts, completions, strict=True):
        c = c if first is None else c[:first]
        seq = torch.tensor([[eos, *p, *c]], device=judge.device)
        mask = torch.zeros_like(seq, dtype=torch.bool)
        mask[:, 1 + len(p):] = True
        a, b = judge.score(seq, mask)
        nll, count = nll + a, count + b
    return nll, count


def span_nats(judge: LanguageModelBase, rows: list[list[int]], lo: int, hi: int) -> float:
    """The judge's nats per token of every row's tokens lo..hi-1 given EOS + the row's tokens before lo."""
    nll, count = judge_nll(judge, [r[:lo] for r in rows], [r[lo:hi] for r in rows])
    return nll / count


def judge_ppl(judge: LanguageModelBase, prompts, completions) -> float:
    """Perplexity of the completions given EOS + prompt, under the judge."""
    return perplexity(*judge_nll(judge, prompts, completions))


def generate_all(model: LanguageModelBase, prompts: list[list[int]], gen_len: int, cfg: SamplingConfig,
                 batch_size: int) -> tuple[list[list[int]], float]:
    """All completions (example i always draws from stream (seed, i), whatever the batch size) and seconds per
    sample (batched)."""
    out, began = [], time.perf_counter()
    for lo in range(0, len(prompts), batch_size):
        batch = prompts[lo:lo + batch_size]
        out.extend(model.generate(batch, gen_len, cfg, example_ids=range(lo, lo + len(batch))))
    return out, (time.perf_counter() - began) / len(prompts)


def fill_all(model: LanguageModelBase, tokens: list[list[int]], given: list[list[bool]], cfg: SamplingConfig,
             batch_size: int) -> list[list[int]]:
    """Every row of `tokens` with its positions not `given` filled by the model, in batches (example i draws
    from stream (seed, i), whatever the batch size)."""
    filled = []
    for lo in range(0, len(tokens), batch_size):
        hi = min(lo + batch_size, len(tokens))
        filled += model.fill(tokens[lo:hi], given[lo:hi], cfg, example_ids=range(lo, hi))
    return filled


def batch1_latency(model: LanguageModelBase, prompt: list[int], gen_len: int, cfg: SamplingConfig) -> float:
    """Seconds to complete one prompt alone, median of 3."""
    singles = []
    for _ in range(3):
        t0 = time.perf_counter()
        model.generate([prompt], gen_len, cfg)
        singles.append(time.perf_counter() - t0)
    return float(np.median(singles))


def supported(model: LanguageModelBase, configs: Iterable[SamplingConfig]) -> list[SamplingConfig]:
    """The configs the model can honour, in order, without repeats."""
    out = []
    for cfg in configs:
        if cfg.changed() <= model.sampling_options and cfg not in out:
            out.append(cfg)
    return out


def prompt_agreement(completions_a: list[list[int]], completions_b: list[list[int]]) -> float:
    """Share of positions at which two sets of completions hold the same token."""
    same = total = 0
    for a, b in zip(completions_a, completions_b, strict=True):
        same += sum(x == y for x, y in zip(a, b, strict=False))
        total += min(len(a), len(b))
    return same / max(total, 1)


def markdown(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))
    return head + "".join("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |\n" for r in rows)


class QualityEval:
    """The held-out prompts, their references and the judge; `row` scores one set of completions."""

    def __init__(self, judge: LanguageModelBase, prompts, refs, freq, samples: int = 3):
        if not judge.can_score:
            raise DimbaError(f"the judge must be an autoregressive model; {judge.display_name} cannot score text")
        self.judge, self.prompts, self.refs, self.freq, self.samples = judge, prompts, refs, freq, samples

    def row(self, label: str, kind: str, completions, **extra) -> dict:
        tok = self.judge.tokenizer
        samples = [{"prompt": tok.decode(p), "completion": tok.decode(c)}
                   for p, c in zip(self.prompts[:self.samples], completions[:self.samples], strict=True)]
        return {"label": label, "model": kind, "gen_ppl": judge_ppl(self.judge, self.prompts, completions),
                **diversity(completions), **extra, "samples": samples}

    def references(self, seed: int) -> list[dict]:
        rows = [self.row("real continuation", "reference", self.refs)]
        rng = np.random.default_rng(seed)
        gen_len = len(self.refs[0])
        random_tokens = rng.choice(len(self.freq), size=(len(self.prompts), gen_len), p=self.freq).tolist()
        rows.append(self.row("random tokens by corpus frequency", "random", random_tokens))
        return rows

    def model_row(self, model: LanguageModelBase, cfg: SamplingConfig, batch_size: int) -> dict:
        """The row of one sampling setting: judged quality, diversity, throughput and latency at batch 1."""
        gen_len = len(self.refs[0])
        completions, per_sample = generate_all(model, self.prompts, gen_len, cfg, batch_size)
        latency = batch1_latency(model, self.prompts[0], gen_len, cfg)
        return self.row(model.describe(cfg), model.kind, completions, **cfg.as_dict(),
                        seconds_per_sample=per_sample, latency_b1_s=latency)

    def match_entropy(self, model: LanguageModelBase, cfg: SamplingConfig, knob: str, batch_size: int,
                      tolerance: float = 0.05, tries: int = 7) -> dict:
        """The row of `cfg` with `knob` (a temperature or top_p) set, by bisection, so that the samples' unigram
        entropy is within `tolerance` bits of the real continuation's (entropy rises with each knob). The row
        says the value found; the last try is kept if none is within tolerance."""
        import dataclasses

        from dimba.eval.metrics import unigram_entropy

        target = unigram_entropy(self.refs)
        lo, hi = KNOB_RANGES[knob]
        gen_len = len(self.refs[0])
        for _ in range(tries):
            value = round((lo + hi) / 2, 4)
            trial = dataclasses.replace(cfg, **{knob: value})
            completions, per_sample = generate_all(model, self.prompts, gen_len, trial, batch_size)
            entropy = unigram_entropy(completions)
            if abs(entropy - target) <= tolerance:
                break
            lo, hi = (value, hi) if entropy < target else (lo, value)
        latency = batch1_latency(model, self.prompts[0], gen_len, trial)
        label = f"{model.describe(trial)} (entropy matched by {knob})"
        return self.row(label, model.kind, completions, **trial.as_dict(), matched_by=knob,
                        target_entropy_bits=target, seconds_per_sample=per_sample, latency_b1_s=latency)

    def infill_blocks(self, gap: int) -> tuple[list[list[int]], int]:
        """The held-out blocks (prompt + continuation) and where a gap of `gap` tokens starts: their middle."""
        blocks = [p + r for p, r in zip(self.prompts, self.refs, strict=True)]
        return blocks, (len(blocks[0]) - gap) // 2

    def infill_reference_row(self, gap: int) -> dict:
        """The real text, judged whole as the filled texts are: the floor of the infilling rows."""
        blocks, start = self.infill_blocks(gap)
        return {"label": f"real text (infilling {gap} tokens)", "model": "reference", "infill_gap": gap,
                **self.infill_scores(blocks, start, gap)}

    def infill_scores(self, texts: list[list[int]], start: int, gap: int) -> dict:
        """The judge's perplexity of each whole text, its nats per token on the gap (does the fill follow what
        precedes it?) and on the `gap` tokens after the gap (does what follows fit the fill? a fill that saw
        only its left context is not chosen for it)."""
        return {"gen_ppl": judge_ppl(self.judge, [[] for _ in texts], texts),
                "fill_nats": span_nats(self.judge, texts, start, start + gap),
                "after_gap_nats": span_nats(self.judge, texts, start + gap, start + 2 * gap)}

    def infill_row(self, model: LanguageModelBase, cfg: SamplingConfig, gap: int, batch_size: int) -> dict:
        """Text infilling: each held-out block with `gap` tokens hidden in its middle, filled by the model; the
        judge's scores of the filled text (`infill_scores`) and the share of gap tokens equal to the real ones."""
        blocks, start = self.infill_blocks(gap)
        given = [[not start <= i < start + gap for i in range(len(b))] for b in blocks]
        filled = fill_all(model, blocks, given, cfg, batch_size)
        exact = sum(f[i] == b[i] for f, b in zip(filled, blocks, strict=True) for i in range(start, start + gap))
        return {"label": f"{model.describe(cfg)}, infilling {gap} tokens", "model": model.kind, "infill_gap": gap,
                **self.infill_scores(filled, start, gap), "gap_token_match": exact / (gap * len(blocks)),
                **cfg.as_dict()}

    def long_row(self, model: LanguageModelBase, cfg: SamplingConfig, length: int, batch_size: int) -> dict:
        """Generation far past the training context (models whose state carries): `length` tokens after each
        prompt, the first and the last window of the real continuation's length judged the same way (the window
        given the prompt's length of text before it), so that the two say whether quality holds. Completions that
        ended (the end-of-sequence token before the last window) are counted and left out of the last window."""
        window = len(self.refs[0])
        context = len(self.prompts[0])
        completions, per_sample = generate_all(model, self.prompts, length, cfg, batch_size)
        eos = model.eos_id
        going = [i for i, c in enumerate(completions) if eos not in c[:-window]]

        def judged(texts: list[list[int]]) -> dict:
            return {"gen_ppl": judge_ppl(self.judge, [t[:context] for t in texts], [t[context:] for t in texts]),
                    **diversity([t[context:] for t in texts])}

        first = judged([p + c[:window] for p, c in zip(self.prompts, completions, strict=True)])
        row = {"label": f"{model.describe(cfg)}, {length} new tokens", "model": model.kind, "length": length,
               "ended_early": 1 - len(going) / len(completions), "seconds_per_sample": per_sample,
               **{f"first_{k}": v for k, v in first.items()}, **cfg.as_dict()}
        if going:
            last = judged([(self.prompts[i] + completions[i])[-(context + window):] for i in going])
            row.update({f"last_{k}": v for k, v in last.items()})
        return row

    def prompt_sensitivity(self, model: LanguageModelBase, cfg: SamplingConfig, batch_size: int,
                           first: int = 4) -> dict:
        """Does a completion follow its prompt, or its noise? Completions of every prompt, and of the same
        prompts shifted by one (prompt i+1 with example i's random stream): the share of positions at which
        the two agree (real text: the share of equal tokens between different continuations), and the judge's
        nats per token of the first `first` tokens after their own prompt against after another prompt."""
        gen_len = len(self.refs[0])
        own, _ = generate_all(model, self.prompts, gen_len, cfg, batch_size)
        shifted_prompts = self.prompts[1:] + self.prompts[:1]
        shifted = []
        for lo in range(0, len(shifted_prompts), batch_size):  # example ids as for `own`: the same noise
            batch = shifted_prompts[lo:lo + batch_size]
            shifted.extend(model.generate(batch, gen_len, cfg, example_ids=range(lo, lo + len(batch))))
        other_prompts = self.prompts[-1:] + self.prompts[:-1]  # a prompt that is not the completion's own
        nats = lambda prompts, completions: (lambda n, c: n / max(c, 1))(
            *judge_nll(self.judge, prompts, completions, first))
        return {"label": model.describe(cfg), "agreement_same_noise": prompt_agreement(own, shifted),
                "agreement_real_text": prompt_agreement(self.refs, self.refs[1:] + self.refs[:1]),
                f"judge_nats_first_{first}_own_prompt": nats(self.prompts, own),
                f"judge_nats_first_{first}_other_prompt": nats(other_prompts, own),
                f"real_nats_first_{first}_own_prompt": nats(self.prompts, self.refs),
                f"real_nats_first_{first}_other_prompt": nats(other_prompts, self.refs)}
