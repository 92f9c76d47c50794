"""LAPDOG / LAPDOG-GRPO fidelity of the presets: stage 2's retriever loss against a
transcription of LAPDOG's own code, and the seed's reward conventions (l2 BLEU, word counts)."""

import types

import numpy as np
import pytest
import torch

from lapdog_jax import config_lib, rewards, steps, validation
from lapdog_jax.data import synthetic, tokenizer


def lapdog_kl_transcription(query_emb, passage_emb, gold_score, temperature_score,
                            temperature_gold):
    """hqsiswiliam/LAPDOG src/lapdog.py: Lapdog.forward's retriever score and
    Lapdog.kldivloss, line for line (torch)."""
    retriever_score = torch.einsum("id, ijd->ij", [query_emb, passage_emb])
    retriever_score = retriever_score / np.sqrt(query_emb.size(-1))
    gold_score = torch.softmax(gold_score / temperature_gold, dim=-1)
    score = torch.nn.functional.log_softmax(retriever_score / temperature_score, dim=-1)
    return torch.nn.KLDivLoss()(score, gold_score)


@pytest.mark.parametrize("preset", config_lib.PRESETS)
def test_lapdog_preset_loss_equals_lapdog_code(preset):
    config = config_lib.mode_config("lapdog", preset)
    rc = config.retrieval
    # LAPDOG README's stage-2 command: TEMP=0.8, TEMPG=0.85.
    assert (rc.temperature_score, rc.temperature_gold) == (0.8, 0.85)
    rng = np.random.default_rng(0)
    B, K, D = 4, 6, 768
    q = rng.normal(size=(B, D)).astype(np.float32)
    p = rng.normal(size=(B, K, D)).astype(np.float32)
    gold = rng.uniform(0.0, 3.0, size=(B, K)).astype(np.float32)
    want = lapdog_kl_transcription(torch.from_numpy(q), torch.from_numpy(p),
                                   torch.from_numpy(gold), rc.temperature_score,
                                   rc.temperature_gold).item()
    got = float(steps.distill_loss(np.einsum("bd,bkd->bk", q, p), gold, D, config))
    assert got == pytest.approx(want, rel=1e-5)
    # Without LAPDOG's 1/√d the scores are 27.7x sharper and the loss is another number.
    raw = config.copy_and_resolve_references()
    raw.retrieval.distill_scale = "none"
    assert abs(float(steps.distill_loss(np.einsum("bd,bkd->bk", q, p), gold, D, raw))
               - want) > 10 * abs(want) * 1e-2


@pytest.mark.parametrize("preset", config_lib.PRESETS)
def test_lapdog_preset_trains_the_shared_encoder_on_both_sides(preset):
    """LAPDOG README's stage-2 command builds the shared DualEncoderRetriever (no
    --query_side_retriever_training) and encodes the pool passages with gradient: the presets
    re-encode them live every step and train through them (the step-level gradient is
    test_steps_supervised.py::test_lapdog_step_trains_both_sides_and_scales_by_the_retriever_width),
    and score the gold answers on decoded text, as LAPDOG's f1rougebleu_score."""
    config = config_lib.mode_config("lapdog", preset)
    m = config.model
    assert (m.shared_retriever, m.passage_scores, m.train_passage_encoder) == (True, "live", True)
    assert config.reward.backend == "host"


def lapdog_f1rougebleu_transcription(outputs, labels, bsz, total_context):
    """hqsiswiliam/LAPDOG src/lapdog.py Lapdog.f1rougebleu_score on decoded text (its
    src/evaluation.py f1_score with the identity normaliser and rouge_score), line for line."""
    from collections import Counter

    from rouge import Rouge
    from sacrebleu import BLEU

    def f1(prediction, ground_truth):
        prediction_tokens, ground_truth_tokens = prediction.split(), ground_truth.split()
        common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    def rouge_l(prediction, ground_truth):
        if len(prediction) == 0 or len(ground_truth) == 0:
            return 0.0
        try:
            return Rouge().get_scores(prediction, ground_truth, avg=True)["rouge-l"]["f"]
        except Exception:  # noqa: BLE001 - as its rouge_wrapper's bare except
            return 0.0

    pt_f1 = torch.tensor([f1(o, lab) for o, lab in zip(outputs, labels, strict=True)])
    pt_rouge = torch.tensor([rouge_l(o, lab) for o, lab in zip(outputs, labels, strict=True)])
    gold_score = pt_f1.view(bsz, total_context) + pt_rouge.view(bsz, total_context)
    bleu = BLEU(effective_order=True)
    pt_bleu_scores = torch.tensor([bleu.sentence_score(o, [lab]).score
                                   for o, lab in zip(outputs, labels, strict=True)])
    pt_bleu_normed = pt_bleu_scores / pt_bleu_scores.norm()
    return (pt_bleu_normed.view(bsz, total_context) + gold_score).numpy()


def test_lapdog_preset_gold_scores_on_text_equal_lapdogs():
    """The presets' text-level gold scores (`reward.backend='host'`): the greedy answers of
    the B x K pool decoded and scored as LAPDOG's f1rougebleu_score does."""
    config = config_lib.mode_config("lapdog", "base")
    answers = ["i like to read books .", "i read , a lot", "", "books are fun to read",
               "i am a stunt double .", "stunt double , yes", "i eat kosher food", "hello"]
    targets = ["i read twenty books a year .", "i am a stunt double ."]
    tok = types.SimpleNamespace(batch_decode=lambda rows, skip_special_tokens: [
        f" {answers[int(r[0])]} " for r in rows])
    got = rewards.host_gold_scores(config.reward, tok, np.arange(8)[:, None], targets)
    want = lapdog_f1rougebleu_transcription(answers, [t for t in targets for _ in range(4)],
                                            2, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_distill_reduction_batchmean_is_k_times_mean():
    config = config_lib.mode_config("lapdog", "base")
    s = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    g = np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32)
    mean = float(steps.distill_loss(s, g, 4, config))
    config.retrieval.distill_reduction = "batchmean"
    assert float(steps.distill_loss(s, g, 4, config)) == pytest.approx(5 * mean, rel=1e-5)


@pytest.mark.parametrize("mode", ["lapdog", "reinforce", "grpo", "joint_grpo"])
def test_presets_use_the_seed_reward(mode):
    for preset in config_lib.PRESETS:
        r = config_lib.mode_config(mode, preset).reward
        assert (r.bleu_norm, r.length_unit) == ("l2", "words"), (mode, preset)
    # The embedded demo keeps BLEU/100 (a completion's reward independent of its batch).
    assert config_lib.mode_config(mode).reward.bleu_norm == "scale"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A SentencePiece T5 tokenizer trained on the synthetic corpus."""
    train, _, stories = synthetic.make_dataset(seed=0, num_train=300, num_valid=5,
                                               num_stories=30)
    out = str(tmp_path_factory.mktemp("tok"))
    return tokenizer.train_sentencepiece(tokenizer.corpus_texts(train, stories), out,
                                         vocab_size=300, seed=0)


PAIRS = [("i like to swim in the lake .", "i like swimming ."),
         ("my dog is called biscuit", "my dog's name is biscuit and he is three"),
         ("boston", "i live in boston ."),
         ("", "i am a nurse ."),
         ("unseenword zzyzx qqq", "i am a nurse")]


def test_word_length_ratio_on_device_equals_the_seeds_on_text(tok):
    words = tokenizer.word_start_ids(tok)
    special = tokenizer.special_ids(tok)
    T = 24
    pred = tokenizer.encode(tok, [p for p, _ in PAIRS], T)[0]
    ref = tokenizer.encode(tok, [r for _, r in PAIRS], T)[0]
    stats = rewards.reward_stats(pred, ref, special,
                                 word_starts=rewards.word_start_table(words))
    want = [rewards.count_ratio(len(p.split()), len(r.split())) for p, r in PAIRS]
    np.testing.assert_allclose(stats["length_ratio"], want, rtol=1e-6)
    by_token = rewards.reward_stats(pred, ref, special)["length_ratio"]
    assert np.abs(np.asarray(by_token) - want).max() > 0.1  # token counts are another ratio


def test_length_unit_binds_word_starts(tok):
    config = config_lib.mode_config("joint_grpo", "base")
    config.reward.length_penalty = 1.0
    special = tokenizer.special_ids(tok)
    with pytest.raises(ValueError, match="length_unit=words"):
        rewards.gold_score(config.reward, special)
    words = tokenizer.word_start_ids(tok)
    pred = tokenizer.encode(tok, ["i like to swim in the lake ."], 24)[0]
    ref = tokenizer.encode(tok, ["i like swimming ."], 24)[0]
    by_words = float(rewards.gold_score(config.reward, special, words)(pred, ref)[0])
    config.reward.length_unit = "tokens"
    by_tokens = float(rewards.gold_score(config.reward, special)(pred, ref)[0])
    stats = rewards.reward_stats(pred, ref, special)
    # One completion: its l2-normalised BLEU is 1 (or 0 when BLEU is 0).
    base = float(stats["f1"][0] + stats["rouge_l"][0] + (stats["bleu"][0] > 0))
    assert by_words == pytest.approx(base * np.exp(-1.0 * abs(1 - 8 / 4)), rel=1e-5)
    assert by_tokens != pytest.approx(by_words, rel=1e-3)
    config.reward.backend = "host"
    with pytest.raises(config_lib.ConfigError, match="length_unit=tokens"):
        validation.validate(config, settings_only=True)
