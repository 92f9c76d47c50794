"""Device rewards vs sacrebleu / `rouge` on id strings; hand-computed rewards; host backend."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rouge import Rouge
from sacrebleu.metrics import BLEU

from lapdog_jax import config_lib, rewards
from tests import reference_rewards

T, R, N = 10, 8, 6  # padded prediction / reference widths and pairs per example: one compile
SPECIAL = np.array([0, 1, 2], np.int32)  # pad, eos, unk
EXTRA_FROM = 30  # ids >= 30 play T5's <extra_id_*>
WORDS = [3, 4, 5, 6, 7, 8]  # a small alphabet so that n-grams repeat and collide
NOISE = [0, 2, 30, 31, 33]  # special ids sprinkled inside sequences (EOS is placed separately)
KW = dict(extra_ids_from=EXTRA_FROM)
WEIGHTS = (0.7, 1.3, 0.9)
PENALTY = 0.4


@jax.jit
def _device_all(pred_NxT, ref_NxR):
    """Every device quantity the property test checks, compiled once for [N, T] / [N, R]."""
    out = dict(rewards.reward_stats(pred_NxT, ref_NxR, SPECIAL, **KW))
    out["rouge_l_plain"] = rewards.rouge_l(pred_NxT, ref_NxR, SPECIAL, exclusive=False, **KW)
    for norm in rewards.BLEU_NORMS:
        out[norm] = rewards.combined_reward(
            pred_NxT, ref_NxR, SPECIAL, WEIGHTS, norm, PENALTY, **KW)
    return out


def _pad(rows, width):
    """[N, width] int32, zero-padded (empty rows fill the batch so every test shares one shape)."""
    out = np.zeros((max(N, len(rows)), width), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@st.composite
def _with_noise(draw, words, width):
    """Words with special ids inserted and maybe an EOS followed by junk, cut to width."""
    seq = list(words)
    for _ in range(draw(st.integers(0, 2))):
        seq.insert(draw(st.integers(0, len(seq))), draw(st.sampled_from(NOISE)))
    if draw(st.booleans()):
        seq += [1] + draw(st.lists(st.sampled_from(WORDS), max_size=3))
    return seq[:width]


@st.composite
def _pair(draw):
    """One (prediction, reference) id pair: random, identical, disjoint, repeated or empty."""
    kind = draw(st.sampled_from(["random", "identical", "disjoint", "repeated", "empty"]))
    words = st.sampled_from(WORDS)
    if kind == "random":
        p, r = draw(st.lists(words, max_size=T)), draw(st.lists(words, max_size=R))
    elif kind == "identical":
        p = r = draw(st.lists(words, max_size=R))
    elif kind == "disjoint":
        p = draw(st.lists(st.sampled_from(WORDS[:3]), max_size=T))
        r = draw(st.lists(st.sampled_from(WORDS[3:]), max_size=R))
    elif kind == "repeated":
        w = draw(words)
        p, r = [w] * draw(st.integers(0, T)), [w] * draw(st.integers(0, R))
    else:
        p, r = [], draw(st.lists(words, max_size=R))
        if draw(st.booleans()):
            p, r = r[:T], p
    if draw(st.booleans()):
        p, r = draw(_with_noise(p, T)), draw(_with_noise(r, R))
    return p, r


@given(st.lists(_pair(), min_size=N, max_size=N))
def test_device_equals_host_reference_on_ids(pairs):
    """Each device metric and both combined rewards equal sacrebleu / rouge on the id strings."""
    pred, ref = _pad([p for p, _ in pairs], T), _pad([r for _, r in pairs], R)
    got = jax.tree.map(np.asarray, _device_all(pred, ref))
    want = reference_rewards.host_reference_on_ids(pred, ref, SPECIAL, **KW)
    for key in ("f1", "rouge_l", "distinct_1", "distinct_2", "length_ratio", "pred_len"):
        np.testing.assert_allclose(got[key], want[key], atol=2e-6, err_msg=key)
    np.testing.assert_allclose(got["bleu"], want["bleu"], rtol=1e-5, atol=1e-4)
    plain = reference_rewards.host_reference_on_ids(pred, ref, SPECIAL, exclusive=False,
                                                    **KW)["rouge_l"]
    np.testing.assert_allclose(got["rouge_l_plain"], plain, atol=2e-6)
    for norm in rewards.BLEU_NORMS:
        ref_reward = reference_rewards.host_reference_reward_on_ids(
            pred, ref, SPECIAL, WEIGHTS, norm, PENALTY, **KW)
        np.testing.assert_allclose(got[norm], ref_reward, rtol=1e-5, atol=1e-5, err_msg=norm)


def test_host_reference_is_sacrebleu_and_rouge_on_id_strings():
    """The reference really is sacrebleu(tokenize='none') / rouge on ' '.join of the valid ids."""
    pred = np.array([[31, 5, 6, 2, 7, 1, 8, 8]])  # valid: 5 6 7 (extra id, unk, after-EOS out)
    ref = np.array([[5, 7, 6, 7, 0, 0, 0, 0]])
    got = reference_rewards.host_reference_on_ids(pred, ref, SPECIAL, **KW)
    bleu = BLEU(tokenize="none", effective_order=True).sentence_score("5 6 7", ["5 7 6 7"]).score
    assert got["bleu"][0] == pytest.approx(bleu)
    rouge_f = Rouge().get_scores("5 6 7", "5 7 6 7")[0]["rouge-l"]["f"]
    assert got["rouge_l"][0] == pytest.approx(rouge_f)
    assert got["f1"][0] == pytest.approx(2 * 3 / (3 + 4))


def test_bleu_hand_computed():
    """'5 6' vs '5 6 7 8': BP e^(1-4/2), precisions 2/2, 1/1, order 2 -> 100/e.

    '3 4 5' vs '5 4 3': p1 = 3/3, no 2- or 3-gram match: 'exp' smoothing gives 100/(2·2) and
    100/(4·1) -> (100·25·25)^(1/3) = 39.685.
    """
    pred = _pad([[5, 6], [3, 4, 5]], T)
    ref = _pad([[5, 6, 7, 8], [5, 4, 3]], R)
    got = np.asarray(rewards.sentence_bleu(pred, ref, SPECIAL, **KW))[:2]
    np.testing.assert_allclose(got, [100 / math.e, (100 * 25 * 25) ** (1 / 3)], rtol=1e-6)


def test_rouge_l_follows_the_package_lcs_choice():
    """rouge 1.0.1 counts distinct tokens of the LCS it backtracks: 'b a' -> 1.0, 'a a' -> 0.5."""
    a, b = 5, 6
    pred = _pad([[b, a, a], [a, a, b]], T)
    ref = _pad([[a, b, a], [a, b, a]], R)
    got = np.asarray(rewards.rouge_l(pred, ref, SPECIAL, **KW))[:2]
    np.testing.assert_allclose(got, [0.999999995, 0.4999999950000001], atol=1e-6)
    plain = np.asarray(rewards.rouge_l(pred, ref, SPECIAL, exclusive=False, **KW))[:2]
    np.testing.assert_allclose(plain, [2 / 3, 2 / 3], atol=1e-6)


def test_length_penalty_hand_computed():
    """pred '5 6' vs ref '5 6 7 8': F1 2/3, ROUGE-L 2/3, BLEU 100/e, ρ 1/2 -> s doubled."""
    pred, ref = _pad([[5, 6, 1, 7]], T), _pad([[5, 6, 7, 8]], R)
    got = rewards.combined_reward(pred, ref, SPECIAL, (1.0, 1.0, 1.0), "scale", 0.5, **KW)
    want = (2 / 3 + 2 / 3 + 1 / math.e) * math.exp(-2 * 0.5 * 0.5)
    np.testing.assert_allclose(np.asarray(got)[:1], [want], rtol=1e-6)
    # Too long by half (ρ = 3/2): the plain s. '5 6 7 8 9 10' vs '5 6 7 8': F1 = 8/10,
    # ROUGE-L = 2·(4/6)(4/4)/(4/6 + 1) = 0.8, BLEU 100·(4/6·3/5·2/4·1/3)^(1/4).
    pred, ref = _pad([[5, 6, 7, 8, 9, 10]], T), _pad([[5, 6, 7, 8]], R)
    got = rewards.combined_reward(pred, ref, SPECIAL, (1.0, 2.0, 3.0), "scale", 0.5, **KW)
    bleu = (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    want = (0.8 + 2 * 0.8 + 3 * bleu) * math.exp(-0.5 * 0.5)
    np.testing.assert_allclose(np.asarray(got)[:1], [want], rtol=1e-6)


def test_l2_all_zero_bleu_batch_is_finite():
    """No shared token: every BLEU is 0; 'l2' gives 0, not NaN (LAPDOG divides by 0 there)."""
    pred, ref = _pad([[3, 4], [5], []], T), _pad([[6, 7], [8, 8], [6]], R)
    got = rewards.combined_reward(pred, ref, SPECIAL, bleu_norm="l2", length_penalty=1.0, **KW)
    assert np.all(np.isfinite(got)) and np.all(np.asarray(got) == 0.0)
    host = rewards.host_combined_reward(["a b", "c"], ["d e", "f"], bleu_norm="l2")
    assert np.all(np.isfinite(host)) and np.all(host == 0.0)


def test_l2_normalises_over_the_whole_batch():
    """BLEU' = BLEU / ‖BLEU‖₂ over every element, whatever the leading dims."""
    pred = _pad([[5, 6], [3, 4, 5], [5, 6, 7, 8]], T)
    ref = _pad([[5, 6, 7, 8], [5, 4, 3], [5, 6, 7, 8]], R)
    bleu = np.array([100 / math.e, (100 * 25 * 25) ** (1 / 3), 100.0])
    got = rewards.combined_reward(pred, ref, SPECIAL, (0.0, 0.0, 1.0), "l2", **KW)
    np.testing.assert_allclose(np.asarray(got)[:3], bleu / np.linalg.norm(bleu), rtol=1e-5)


def test_special_ids_and_tail_after_eos_are_ignored():
    """Extra ids, pad, unk and everything after the first EOS do not change any reward."""
    clean = _pad([[5, 6, 7]], T)
    noisy = _pad([[31, 5, 0, 6, 2, 7, 1, 5, 6, 7]], T)
    ref = _pad([[5, 6, 8, 7]], R)
    a = rewards.reward_stats(clean, ref, SPECIAL, **KW)
    b = rewards.reward_stats(noisy, ref, SPECIAL, **KW)
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_grouped_shapes_broadcast_and_vmap():
    """pred [B, Gr, G, T] against ref [B, 1, 1, R] equals the flat computation; vmap works too."""
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 9, size=(2, 2, 3, T)).astype(np.int32)
    ref = rng.integers(0, 9, size=(2, 1, 1, R)).astype(np.int32)
    got = rewards.combined_reward(pred, ref, SPECIAL, bleu_norm="l2")
    assert got.shape == (2, 2, 3)
    flat_ref = np.broadcast_to(ref, (2, 2, 3, R)).reshape(-1, R)
    want = reference_rewards.host_reference_reward_on_ids(pred.reshape(-1, T), flat_ref, SPECIAL,
                                                bleu_norm="l2")
    np.testing.assert_allclose(np.asarray(got).ravel(), want, rtol=1e-5, atol=1e-6)
    f1 = jax.vmap(rewards.unigram_f1, in_axes=(0, 0, None))(pred, jnp.asarray(ref), SPECIAL)
    np.testing.assert_allclose(np.asarray(f1), np.asarray(rewards.unigram_f1(pred, ref, SPECIAL)))


def test_t5_special_ids():
    """T5: pad/eos/unk plus the top 100 ids of the tokenizer are special."""
    special, extra_from = rewards.t5_special_ids(32100)
    assert extra_from == 32000 and list(special) == [0, 1, 2]
    ids = jnp.array([[0, 5, 32000, 32099, 31999, 2, 1, 7]])
    mask = rewards.valid_mask(ids, special, extra_ids_from=extra_from)
    assert mask.tolist() == [[False, True, False, False, True, False, False, False]]


def test_host_text_reward_uses_lapdog_semantics():
    """Text backend: raw-word F1 (LAPDOG calls f1_score without a normaliser), rouge, sacrebleu."""
    pred, ref = "i love my dog .", "i love dogs"
    # Raw words share {i, love}: P = 2/5, R = 2/3 -> F1 = 0.5; SQuAD-normalised: P = 2/4 -> 4/7.
    assert rewards.host_combined_reward([pred], [ref], (1, 0, 0))[0] == pytest.approx(0.5)
    squad = rewards.host_combined_reward([pred], [ref], (1, 0, 0), squad_normalize=True)
    assert squad[0] == pytest.approx(4 / 7)
    rouge_f = Rouge().get_scores(pred, ref)[0]["rouge-l"]["f"]
    assert rewards.host_combined_reward([pred], [ref], (0, 1, 0))[0] == pytest.approx(rouge_f)
    bleu = BLEU(effective_order=True).sentence_score(pred, [ref]).score
    assert rewards.host_combined_reward([pred], [ref], (0, 0, 1))[0] == pytest.approx(bleu / 100)
    # ρ = 5/3 words: the plain s.
    got = rewards.host_combined_reward([pred], [ref], (1, 0, 0), length_penalty=0.3)[0]
    assert got == pytest.approx(0.5 * math.exp(-0.3 * 2 / 3))


def test_reward_factories_from_config():
    """config.reward picks the backend and its arguments; the gold score stays on device."""
    cfg = config_lib.base_config("grpo").reward
    fn = jax.jit(rewards.make_device_reward(cfg, SPECIAL, **KW))
    pred, ref = _pad([[5, 6]], T), _pad([[5, 6, 7, 8]], R)
    want = rewards.combined_reward(pred, ref, SPECIAL, **KW)
    np.testing.assert_allclose(np.asarray(fn(pred, ref)), np.asarray(want))
    host_cfg = config_lib.base_config("grpo").reward
    host_cfg.backend = "host"
    assert rewards.make_device_reward(host_cfg, SPECIAL, **KW) is None
    assert rewards.make_host_reward(host_cfg)(["q"], ["a b"], ["a b"])[0] == pytest.approx(3.0)
    gold = rewards.gold_score(host_cfg, SPECIAL, **KW)(pred, ref)
    np.testing.assert_allclose(np.asarray(gold), np.asarray(want))


def test_local_bleu_norm_divides_each_devices_rows_by_their_own_norm():
    """BLEU/‖BLEU‖₂ per device's rows ('local', as LAPDOG per GPU) by hand: rows (3, 4) and
    (0, 5) give (0.6, 0.8) and (0, 1); over the whole batch ('global') each is /√50; the
    device kernel, the grouped host combination and the reward binding agree."""
    bleu = jnp.asarray([3.0, 4.0, 0.0, 5.0])
    np.testing.assert_allclose(rewards.normalize_bleu(bleu, "l2", groups=2), [0.6, 0.8, 0, 1])
    np.testing.assert_allclose(rewards.normalize_bleu(bleu, "l2"), np.asarray(bleu) / 50 ** 0.5,
                               rtol=1e-6)
    np.testing.assert_allclose(rewards.normalize_bleu(jnp.zeros((2, 2)), "l2", groups=2), 0)
    pred = np.random.default_rng(1).integers(3, 9, size=(4, T)).astype(np.int32)
    ref = np.random.default_rng(2).integers(3, 9, size=(4, R)).astype(np.int32)
    halves = [rewards.combined_reward(pred[i:i + 2], ref[i:i + 2], SPECIAL, bleu_norm="l2")
              for i in (0, 2)]
    got = rewards.combined_reward(pred, ref, SPECIAL, bleu_norm="l2", groups=2)
    np.testing.assert_allclose(got, np.concatenate(halves), rtol=1e-6)
    rc = config_lib.mode_config("grpo").reward
    with rc.unlocked():
        rc.bleu_norm, rc.bleu_norm_scope = "l2", "local"
    bound = rewards.make_device_reward(rc, SPECIAL, fns=(("f1rougebleu", 1.0),), groups=2)
    np.testing.assert_allclose(bound(pred, ref), got, rtol=1e-6)
    with rc.unlocked():
        rc.bleu_norm_scope = "global"
    bound = rewards.make_device_reward(rc, SPECIAL, fns=(("f1rougebleu", 1.0),), groups=2)
    np.testing.assert_allclose(bound(pred, ref), rewards.combined_reward(
        pred, ref, SPECIAL, bleu_norm="l2"), rtol=1e-6)


def test_bad_bleu_norm_is_an_error():
    """An unknown normalisation is rejected on both backends."""
    pred, ref = _pad([[5]], T), _pad([[5]], R)
    with pytest.raises(ValueError, match="bleu_norm"):
        rewards.combined_reward(pred, ref, SPECIAL, bleu_norm="max", **KW)
    with pytest.raises(ValueError, match="bleu_norm"):
        rewards.host_combined_reward(["a"], ["a"], bleu_norm="max")



def test_host_reward_f1_squad_normalize_is_the_eval_f1():
    """reward.f1_squad_normalize: the host reward's F1 is evaluation's (SQuAD-normalised words),
    so a completion of punctuation earns nothing; it needs the host backend."""
    from lapdog_jax import metrics, validation

    config = config_lib.mode_config("grpo")
    config.reward.backend = "host"
    config.reward.weights = (1.0, 0.0, 0.0)
    preds, refs = ["i love my dog .", ". . ."], ["i love dogs .", "hi . how are you ?"]
    raw = rewards.make_host_reward(config.reward)(refs, preds, refs)
    # P = 3/5, R = 3/4, then P = 1/3, R = 1/6: '.' matches '.' in raw words ...
    assert raw.tolist() == pytest.approx([2 / 3, 2 / 9])
    config.reward.f1_squad_normalize = True
    got = rewards.make_host_reward(config.reward)(refs, preds, refs)
    want = [metrics.token_f1(p, r) for p, r in zip(preds, refs, strict=True)]
    assert got.tolist() == pytest.approx(want)
    assert got.tolist() == pytest.approx([4 / 7, 0.0])  # ... and nothing normalised
    config.reward.backend = "device"
    with pytest.raises(config_lib.ConfigError, match="f1_squad_normalize=True needs"):
        validation.validate(config)


def test_config_json_from_before_f1_squad_normalize_reads_back(tmp_path):
    """A workdir written before reward.f1_squad_normalize (a stage-1 start) reads back with
    LAPDOG's whitespace words, and validates."""
    import json

    from lapdog_jax import validation
    from lapdog_jax import workdir as workdir_lib

    workdir_lib.save_config(config_lib.mode_config("sft"), str(tmp_path))
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["reward"]["f1_squad_normalize"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    old = workdir_lib.load_config(str(tmp_path))
    assert old.reward.f1_squad_normalize is False
    validation.validate(old)
