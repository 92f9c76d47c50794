"""The reward registry (`config.reward.fn`): which metric kernel each name runs, on device or
on host, the one factory that binds a config to them, and the calls of users' host functions.

Built-ins (`BUILTINS`) run on token ids inside the jitted reward step (`reward.backend=
'device'`) or on decoded text (`'host'`); any other name is a host function 'module:function',
called once per step on this process's rows, whose failures become a one-line `RewardError`
naming the function and the example. It is called one of two ways:
  - ours: f(prompts, completions, references) -> N floats (positional lists of N strings);
  - TRL's, for a function with a `**kwargs` parameter (as TRL's documented reward functions):
    f(prompts=..., completions=..., references=..., **fields) -> N floats or None, where
    `references` holds each completion's reference answer (the one trained on) and `fields`
    every other field of the data records, by name (a LAPDOG dialogue's `answers`, any
    extra field of a seq2seq jsonl such as `ground_truth` or `task`), one value per
    completion. As in TRL, None marks an example the function does not apply to: it adds 0 to
    the weighted sum (TRL's nansum), and a row no host function applies to is warned about.
The kernels themselves are `lapdog_jax.reward_kernels` (re-exported here).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lapdog_jax import distributed, errors, metrics, run_spec
from lapdog_jax.config_lib import ConfigError
from lapdog_jax.reward_kernels import (  # noqa: F401 - re-exported: the kernels' public names
    BLEU_NORMS,
    EOS_ID,
    MAX_ORDER,
    PAD_ID,
    T5_NUM_EXTRA_IDS,
    UNK_ID,
    combined_reward,
    count_ratio,
    host_combine,
    host_combined_reward,
    host_contains,
    host_length,
    host_text_scores,
    length_penalty_factor,
    length_ratio,
    match_stats,
    normalize_bleu,
    reward_stats,
    rouge_l,
    sentence_bleu,
    t5_special_ids,
    unigram_f1,
    valid_mask,
    word_start_table,
)

# reward.backend: 'device' takes padded ids (jitted inside the step); 'host' decoded strings.
REWARD_BACKENDS = ("device", "host")


# name -> f(reward_config, pred, ref, **ids) on device (ids: special_ids, word_starts, ...).
DEVICE_REWARDS: dict[str, Callable[..., jax.Array]] = {
    "f1rougebleu": lambda rc, pred, ref, groups=1, **kw: combined_reward(
        pred, ref, weights=tuple(rc.weights), bleu_norm=rc.bleu_norm,
        length_penalty=rc.length_penalty,
        groups=groups if rc.bleu_norm_scope == "local" else 1, **kw),
    "exact_match": lambda rc, pred, ref, **kw: match_stats(pred, ref, **kw)["exact_match"],
    "contains_answer": lambda rc, pred, ref, **kw: match_stats(pred, ref, **kw)[
        "contains_answer"],
    "length": lambda rc, pred, ref, **kw: match_stats(pred, ref, **kw)["length"],
}
# The same names on decoded text (reward.backend='host'): name -> f(reward_config,
# completions, references) -> [N] float64. exact_match and contains_answer compare SQuAD-
# normalised text (as evaluation's em), length counts whitespace words.
HOST_BUILTINS: dict[str, Callable[..., np.ndarray]] = {
    "f1rougebleu": lambda rc, c, r: host_combined_reward(
        c, r, tuple(rc.weights), rc.bleu_norm, rc.length_penalty,
        squad_normalize=rc.f1_squad_normalize,
        total=float if rc.bleu_norm_scope == "local" else distributed.sum_over_processes),
    "exact_match": lambda rc, c, r: np.array(
        [metrics.exact_match(x, y) for x, y in zip(c, r, strict=True)], np.float64),
    "contains_answer": lambda rc, c, r: host_contains(c, r),
    "length": lambda rc, c, r: host_length(c, r),
}
BUILTINS = tuple(DEVICE_REWARDS)


class RewardError(ValueError):
    """A host reward function failed or returned something that is not one float per example
    (the one-line message names the function and the example)."""


def _uses_words(name: str, reward_config) -> bool:
    """Whether built-in `name` counts lengths in words under `reward_config`."""
    if reward_config.length_unit != "words":
        return False
    return name == "length" or (name == "f1rougebleu" and bool(reward_config.length_penalty))


def make_device_reward(reward_config, special_ids, word_start_ids=(), fns=None, groups=1,
                       **kw):
    """The one binding of `config.reward` to device kernels: the weighted sum Σ w_i r_i of the
    built-ins `fns` [(name, weight)] as a jittable f(pred [..., T], ref [..., R]) -> [...] on
    token ids, or None when none of them runs on device. `fns` None: `reward.fn`'s built-ins
    when `reward.backend='device'` (the RL reward); `gold_score` passes LAPDOG's gold score. A
    lone weight-1 'f1rougebleu' is exactly `combined_reward` (the default reward is the gold
    score, bit for bit). Lengths count words (the tokenizer's `word_start_ids`) where
    `reward.length_unit='words'` applies. `groups`: the devices a batch is split over (BLEU's
    l2 norm per device with `reward.bleu_norm_scope='local'`)."""
    if fns is None:
        if reward_config.backend != "device":
            return None
        fns = run_spec.reward_fns(reward_config)
    parts = [(n, w) for n, w in fns if n in DEVICE_REWARDS]
    if not parts:
        return None
    words = any(_uses_words(n, reward_config) for n, _ in parts)
    if words and not len(word_start_ids):
        raise ValueError("--config.reward.length_unit=words: the device reward needs the "
                         "tokenizer's word-start ids")
    ids = dict(special_ids=jnp.asarray(special_ids), **kw)
    bound = [(functools.partial(DEVICE_REWARDS[n], reward_config,
                                word_starts=word_start_table(word_start_ids)
                                if _uses_words(n, reward_config) else None, **ids,
                                **({"groups": groups} if n == "f1rougebleu" else {})), w)
             for n, w in parts]

    def total(pred, ref):
        """Σ w_i r_i of the device built-ins."""
        out = None
        for fn, w in bound:
            r = fn(pred, ref)
            r = r if w == 1.0 else w * r
            out = r if out is None else out + r
        return out

    return total


def gold_score(reward_config, special_ids, word_start_ids=(), **kw):
    """LAPDOG's gold score (`reward.gold_score_mode`) on device, whatever `reward.backend`
    says: f(pred [..., T], ref [..., R]) -> [...]."""
    return make_device_reward(reward_config, special_ids, word_start_ids,
                              fns=((reward_config.gold_score_mode, 1.0),), **kw)


def host_gold_scores(reward_config, tokenizer, tokens_local, targets: Sequence[str]
                     ) -> np.ndarray:
    """LAPDOG's gold scores [B_local, K] on decoded text (`reward.backend='host'` in lapdog
    mode), as its `f1rougebleu_score`: the greedy answers `tokens_local` [B_local*K, T] (K per
    prompt, adjacent) decoded, scored against their prompt's `targets` with whitespace F1,
    ROUGE-L and sacrebleu 13a BLEU (l2-normalised over the global batch)."""
    preds = [p.strip() for p in tokenizer.batch_decode(tokens_local, skip_special_tokens=True)]
    k = len(preds) // len(targets)
    refs = [t for t in targets for _ in range(k)]
    gold = HOST_BUILTINS[reward_config.gold_score_mode](reward_config, preds, refs)
    return gold.reshape(len(targets), k).astype(np.float32)


def _example(prompts, completions, references, i: int) -> str:
    """Example `i` for an error message: index and (shortened) texts."""
    short = lambda t: repr(t if len(t) <= 80 else t[:77] + "...")
    return (f"example {i} (prompt {short(prompts[i])}, completion {short(completions[i])}, "
            f"reference {short(references[i])})")


# Keywords a TRL-style host reward gets from us; data fields of these names are not passed.
RESERVED_KEYWORDS = ("prompts", "completions", "references")


def trl_style(fn) -> bool:
    """Whether `fn` takes TRL's keyword call (it has a `**kwargs` parameter)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: our positional call
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _call(fn, trl: bool, prompts, completions, references, fields: Mapping[str, Sequence]):
    """One call of a host reward, ours (positional) or TRL's (keywords)."""
    if not trl:
        return fn(list(prompts), list(completions), list(references))
    extra = {k: list(v) for k, v in fields.items() if k not in RESERVED_KEYWORDS}
    return fn(prompts=list(prompts), completions=list(completions),
              references=list(references), **extra)


def completion_fields(records: Sequence[Mapping], per_prompt: int) -> dict[str, list]:
    """{field: one value per completion} of the prompts' data records (each repeated for its
    `per_prompt` adjacent completions; None where a record lacks the field)."""
    names = sorted({k for r in records for k in r})
    return {k: [r.get(k) for r in records for _ in range(per_prompt)] for k in names}


def call_host_reward(name: str, fn, prompts, completions, references,
                     fields: Mapping[str, Sequence] | None = None) -> np.ndarray:
    """fn's rewards as [N] float64 (NaN where a TRL-style function returned None), called our
    way or TRL's (`trl_style`; `fields`: {name: N values} of the data records' other fields),
    or a one-line RewardError naming `name` and the first example it fails on (found by
    calling it again one example at a time) or returns a non-finite value for."""
    n, fields, trl = len(completions), dict(fields or {}), trl_style(fn)
    try:
        raw = _call(fn, trl, prompts, completions, references, fields)
    except Exception as e:  # noqa: BLE001 - a user's function may raise anything
        for i in range(n):
            try:
                _call(fn, trl, [prompts[i]], [completions[i]], [references[i]],
                      {k: [v[i]] for k, v in fields.items()})
            except Exception as e_i:  # noqa: BLE001
                raise RewardError(f"reward {name} failed on "
                                  f"{_example(prompts, completions, references, i)}: "
                                  f"{errors.one_line(e_i)}") from e_i
        raise RewardError(f"reward {name} failed on a batch of {n} examples (on none alone): "
                          f"{errors.one_line(e)}") from e
    none = np.zeros((n,), bool)
    if trl and isinstance(raw, list | tuple) and len(raw) == n:
        none = np.array([v is None for v in raw])
        raw = [np.nan if v is None else v for v in raw]
    out = np.asarray(raw, np.float64)
    if out.shape != (n,):
        raise RewardError(f"reward {name} returned shape {out.shape} for {n} completions; "
                          "expected one float per completion")
    bad = np.flatnonzero(~np.isfinite(out) & ~none)
    if bad.size:
        raise RewardError(f"reward {name} returned {out[bad[0]]} for "
                          f"{_example(prompts, completions, references, int(bad[0]))}")
    return out


def load_host_reward(name: str):
    """The function `module:function` names (imported), or a ConfigError naming
    `--config.reward.fn` that says why it cannot be had."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--config.reward.fn={name}: unknown reward; expected one of "
                          f"{', '.join(BUILTINS)} or module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise ConfigError(f"--config.reward.fn={name}: cannot import {module_name} "
                          f"({type(e).__name__}: {e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--config.reward.fn={name}: {module_name} has no function {attr}")
    return fn


def make_host_reward(reward_config):
    """The weighted sum Σ w_i r_i of `reward.fn`'s host rewards as
    f(prompts, completions, references, fields=None) -> [N] float64 (lists of N strings;
    `fields` {name: N values} for TRL-style functions), or None when
    every reward runs on device. Host rewards are the 'module:function' names (TRL's
    reward_funcs: called on the whole batch, once per step) and, with
    `reward.backend='host'`, the built-ins on decoded text."""
    fns = []
    for name, w in run_spec.reward_fns(reward_config):
        if name in HOST_BUILTINS:
            if reward_config.backend == "host":
                fns.append((name, functools.partial(
                    lambda f, _p, c, r: f(reward_config, c, r), HOST_BUILTINS[name]), w))
        else:
            fns.append((name, load_host_reward(name), w))
    if not fns:
        return None

    def total(prompts, completions, references, fields=None) -> np.ndarray:
        """Σ w_i r_i of the host rewards, a None (NaN) adding 0 (TRL's nansum)."""
        out = np.zeros((len(completions),), np.float64)
        applies = np.zeros((len(completions),), bool)
        for name, fn, w in fns:
            r = call_host_reward(name, fn, prompts, completions, references, fields)
            applies |= ~np.isnan(r)
            out += w * np.nan_to_num(r, nan=0.0)
        if not applies.all():
            i = int(np.flatnonzero(~applies)[0])
            logging.log_first_n(logging.WARNING, "every host reward returned None for %s: "
                                "it adds 0 (as in TRL)", 1,
                                _example(prompts, completions, references, i))
        return out

    return total
