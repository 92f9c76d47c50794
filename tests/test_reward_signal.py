"""benchmarks/reward_signal.py: the statistics on hand-made rewards (no model runs here)."""

import importlib.util
import os

import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "reward_signal.py")
_spec = importlib.util.spec_from_file_location("reward_signal", _PATH)
reward_signal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reward_signal)


def test_summarise_by_hand():
    # 3 dialogues, pool of 3 stories, G=2 answers each; dialogue 2 has no gold in its pool.
    r = np.array([[[1.0, 0.8], [0.6, 0.6], [0.2, 0.4]],
                  [[0.5, 0.5], [0.9, 0.7], [0.0, 0.2]],
                  [[0.3, 0.3], [0.3, 0.3], [0.3, 0.3]]])
    gold = np.array([[True, False, False], [False, True, False], [False, False, False]])
    same = np.array([[True, True, False], [True, True, False], [True, True, True]])
    s = reward_signal.summarise(r, gold, same)
    assert (s["dialogues"], s["dialogues_without_gold_in_pool"], s["group_size"]) == (2, 1, 2)
    # story means: d0 gold 0.9, wrong 0.6 (same topic), 0.3; d1 gold 0.8, wrong 0.5 (same), 0.1
    assert s["gold_reward"] == pytest.approx(0.85)
    assert s["wrong_reward"] == pytest.approx((0.6 + 0.3 + 0.5 + 0.1) / 4)
    assert s["gap_vs_mean_wrong"] == pytest.approx(((0.9 - 0.45) + (0.8 - 0.3)) / 2)
    assert s["gap_vs_best_wrong"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.5)) / 2)
    # per-story sample variances (ddof=1) of pairs: d0 .02, 0, .02; d1 0, .02, .02
    within = np.sqrt((0.02 + 0 + 0.02 + 0 + 0.02 + 0.02) / 6)
    assert s["within_group_std"] == pytest.approx(within)
    assert s["story_mean_stderr"] == pytest.approx(within / np.sqrt(2))
    assert s["gap_over_stderr"] == pytest.approx(0.475 / (within / np.sqrt(2)))
    assert s["gold_beats_wrong_pairwise"] == 1.0 and s["gold_beats_all_wrong"] == 1.0
    assert s["wrong_same_topic_reward"] == pytest.approx(0.55)
    assert s["wrong_other_topic_reward"] == pytest.approx(0.2)
    # A wrong story that out-earns the gold one counts against it.
    r2 = r.copy()
    r2[0, 1] = [1.0, 1.0]
    s2 = reward_signal.summarise(r2, gold, same)
    assert s2["gold_beats_all_wrong"] == 0.5 and s2["gold_beats_wrong_pairwise"] == 0.75
    assert s2["gold_beats_same_topic_pairwise"] == 0.5


def test_story_topics_cover_the_synthetic_titles():
    from lapdog_jax.data import synthetic

    topics = reward_signal.story_topics()
    _, _, stories = synthetic.make_dataset(seed=0, num_train=10, num_valid=2, num_stories=20)
    names = {topics[p.title] for p in stories}
    assert names == {t.name for t in synthetic.TOPICS}
