"""The reward registry (`config.reward.fn`): built-ins against hand-computed values, host
`module:function` rewards defined here, weighted sums, one-line errors, config validation."""

import re
import types

import jax
import numpy as np
import pytest

from lapdog_jax import config_lib, distributed, rewards, train, validation
from lapdog_jax import data as data_lib
from lapdog_jax.config_lib import ConfigError

SPECIAL = np.array([0, 1, 2], np.int32)  # pad, eos, unk
KW = dict(extra_ids_from=30)  # ids >= 30 play T5's <extra_id_*>
HERE = "tests.test_reward_registry"
# Word-start pieces for reward.length_unit='words': ids 3..9 start a word, 10..29 continue one.
WORD_STARTS = tuple(range(3, 10))


def _ids(rows, width=8):
    """[N, width] int32 zero-padded."""
    out = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def mentions_prompt(prompts, completions, references):
    """A host reward: 1 when the completion repeats the prompt's first word."""
    return [float(p.split()[0] in c.split()) for p, c in zip(prompts, completions, strict=True)]


def fails_on_seven(prompts, completions, references):
    """A host reward that raises on a completion holding '7' (the example the error names)."""
    return [float(int(c) == int(r)) if "7" not in c else 1 / 0
            for c, r in zip(completions, references, strict=True)]


def returns_nan(prompts, completions, references):
    """A host reward with a NaN for the second example."""
    return [0.0, float("nan")][:len(completions)]


# Two host rewards written exactly as TRL's GRPOTrainer documents them: keyword arguments,
# dataset columns by name, **kwargs for the rest, None where a function does not apply.
def reward_func(completions, ground_truth, **kwargs):
    # Regular expression to capture content inside \boxed{}
    matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    # Reward 1 if the content is the same as the ground truth, 0 otherwise
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]  # noqa: B905


def check_math_solution(prompt, completion):
    """The sum the prompt asks for appears in the completion."""
    return str(sum(int(x) for x in prompt.split("+"))) in completion


def math_reward_func(prompts, completions, task, **kwargs):
    rewards = []
    for prompt, completion, t in zip(prompts, completions, task):  # noqa: B905
        if t == "math":
            # Calculate math-specific reward
            correct = check_math_solution(prompt, completion)
            reward = 1.0 if correct else -1.0
            rewards.append(reward)
        else:
            # Return None for non-math tasks
            rewards.append(None)
    return rewards


def _reward_config(fn, weights=(), **overrides):
    """The default reward config with `reward.fn` (and weights) set."""
    c = config_lib.base_config("grpo").reward
    c.fn, c.fn_weights = fn, tuple(weights)
    for k, v in overrides.items():
        c[k] = v
    return c


def test_device_builtins_hand_computed():
    """exact_match / contains_answer / length on valid ids (specials, sentinels, EOS removed)."""
    pred = _ids([[5, 6], [30, 5, 0, 6, 1, 9], [4, 5, 6, 7], [5], [], [6, 5]])
    ref = _ids([[5, 6], [5, 6], [5, 6], [5, 6], [5, 6], [5, 6]])
    got = jax.device_get(rewards.match_stats(pred, ref, SPECIAL, **KW))
    np.testing.assert_array_equal(got["exact_match"], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(got["contains_answer"], [1, 1, 1, 0, 0, 0])
    # min(ρ, 1/ρ) with ρ = 2/2, 2/2, 4/2, 1/2, 0/2, 2/2 tokens
    np.testing.assert_allclose(got["length"], [1, 1, 0.5, 0.5, 0, 1])
    # In words (ids 10+ continue a word): [4, 15, 16] is one word against two.
    words = rewards.word_start_table(WORD_STARTS)
    got = rewards.match_stats(_ids([[4, 15, 16]]), _ids([[5, 6]]), SPECIAL, word_starts=words,
                              **KW)
    assert float(got["length"][0]) == pytest.approx(0.5)


def test_host_builtins_hand_computed():
    """The same names on text: SQuAD-normalised exact match and containment, word length."""
    c, r = ["The 7.", "it is 7 apples", "17", ""], ["7", "7", "7", "7"]
    rc = _reward_config("exact_match,contains_answer,length", backend="host")
    assert rewards.make_device_reward(rc, SPECIAL) is None
    np.testing.assert_array_equal(rewards.HOST_BUILTINS["exact_match"](rc, c, r), [1, 0, 0, 0])
    np.testing.assert_array_equal(rewards.HOST_BUILTINS["contains_answer"](rc, c, r),
                                  [1, 1, 0, 0])
    np.testing.assert_allclose(rewards.HOST_BUILTINS["length"](rc, c, r), [0.5, 0.25, 1, 0])
    total = rewards.make_host_reward(rc)(["q"] * 4, c, r)
    np.testing.assert_allclose(total, [2.5, 1.25, 1, 0])


def test_default_reward_is_the_gold_score_bit_for_bit():
    """reward.fn='f1rougebleu' (the default) is exactly the gold score, `combined_reward` with
    the config's weights, BLEU normalisation and length penalty."""
    rc = config_lib.base_config("grpo").reward
    assert rc.fn == "f1rougebleu" and rewards.make_host_reward(rc) is None
    pred = _ids([[5, 6, 7], [5, 9, 9, 6], [30, 8]])
    ref = _ids([[5, 6, 7, 8], [5, 6], [8]])
    want = rewards.combined_reward(pred, ref, SPECIAL, tuple(rc.weights), rc.bleu_norm,
                                   rc.length_penalty, **KW)
    np.testing.assert_array_equal(np.asarray(rewards.gold_score(rc, SPECIAL, **KW)(pred, ref)),
                                  np.asarray(want))
    got = rewards.make_device_reward(rc, SPECIAL, **KW)(pred, ref)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_weighted_device_and_host_rewards():
    """Several rewards with weights: Σ w_i r_i, device built-ins and a host module:function."""
    rc = _reward_config(f"exact_match,length,{HERE}:mentions_prompt", (2.0, 0.5, 3.0),
                        length_unit="tokens")
    validation.validate(_config_with(rc), num_devices=1)
    pred, ref = _ids([[5, 6], [5, 6, 7, 8]]), _ids([[5, 6], [5, 6]])
    device = np.asarray(jax.jit(rewards.make_device_reward(rc, SPECIAL, **KW))(pred, ref))
    np.testing.assert_allclose(device, [2.0 * 1 + 0.5 * 1, 2.0 * 0 + 0.5 * 0.5])
    host = rewards.make_host_reward(rc)(["tom has 3", "ann has 4"], ["tom 7", "7"], ["7", "7"])
    np.testing.assert_allclose(host, [3.0, 0.0])


def test_failing_user_reward_names_function_and_example():
    """A user's function that raises: one line naming the function, the example's index and
    its text; a NaN is named the same way."""
    rc = _reward_config(f"{HERE}:fails_on_seven")
    fn = rewards.make_host_reward(rc)
    with pytest.raises(rewards.RewardError) as e:
        fn(["p0", "p1", "p2"], ["3", "4", "17"], ["3", "5", "17"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"reward {HERE}:fails_on_seven failed on example 2 ")
    assert "completion '17'" in msg and "ZeroDivisionError: division by zero" in msg
    with pytest.raises(rewards.RewardError, match=r"returns_nan returned nan for example 1 "
                                                  r"\(prompt 'b', completion 'y'"):
        rewards.make_host_reward(_reward_config(f"{HERE}:returns_nan"))(
            ["a", "b"], ["x", "y"], ["x", "y"])


def _config_with(reward_config):
    """The grpo config with `reward_config` as its reward."""
    c = config_lib.mode_config("grpo")
    for k in ("fn", "fn_weights", "length_unit", "backend"):
        c.reward[k] = reward_config[k]
    return c


@pytest.mark.parametrize("fn, weights, message", [
    ("exact", (), r"^--config\.reward\.fn=exact: unknown reward; expected one of "
                  r"f1rougebleu, exact_match, contains_answer, length or module:function"),
    ("no_such_module_xyz:f", (), r"^--config\.reward\.fn=no_such_module_xyz:f: cannot import "
                                 r"no_such_module_xyz \(ModuleNotFoundError"),
    (f"{HERE}:missing", (), rf"^--config\.reward\.fn={HERE}:missing: {HERE} has no function "
                            r"missing$"),
    ("exact_match,,length", (), r"^--config\.reward\.fn=exact_match,,length: expected "),
    ("exact_match,length", (1.0,), r"^--config\.reward\.fn_weights=\(1\.0,\): expected 2 "),
])
def test_bad_reward_names_are_config_errors(fn, weights, message):
    """validate() names --config.reward.fn for an unknown or unimportable reward."""
    with pytest.raises(ConfigError, match=message):
        validation.validate(_config_with(_reward_config(fn, weights)), num_devices=1)


def test_registry_matches_config_choices():
    """config_lib's built-in names are the registry's, on both backends."""
    assert config_lib.REWARD_BUILTINS == rewards.BUILTINS == tuple(rewards.HOST_BUILTINS)


TRL_JSONL = ('{"prompt": "2+2", "answer": "4", "ground_truth": "4", "task": "math"}\n'
             '{"prompt": "say hi", "answer": "hi", "ground_truth": "hi", "task": "chat"}\n')


def test_trl_style_reward_functions_run_unchanged(tmp_path):
    """TRL's documented reward functions, unchanged: called with keywords (the data records'
    other fields by name, one value per completion), a None adding 0 to the weighted sum (TRL's
    nansum); our positional functions keep their call."""
    path = tmp_path / "train.jsonl"
    path.write_text(TRL_JSONL)
    records = data_lib.read_seq2seq(str(path))
    assert records[1].fields == {"answer": "hi", "ground_truth": "hi", "task": "chat"}
    assert rewards.trl_style(reward_func) and not rewards.trl_style(mentions_prompt)
    rc = _reward_config(f"{HERE}:reward_func,{HERE}:math_reward_func,{HERE}:mentions_prompt",
                        (1.0, 2.0, 0.5))
    fields = rewards.completion_fields([r.fields for r in records], 2)
    prompts = ["2+2", "2+2", "say hi", "say hi"]
    completions = ["\\boxed{4}", "5", "\\boxed{hi}", "say hello"]
    out = rewards.make_host_reward(rc)(prompts, completions, ["4", "4", "hi", "hi"], fields)
    # reward_func [1, 0, 1, 0]; math_reward_func [1, -1, None, None] x 2; mentions_prompt
    # [0, 0, 0, 1] x 0.5
    np.testing.assert_allclose(out, [3.0, -2.0, 1.0, 0.5])


def test_trainer_passes_the_records_fields(tmp_path):
    """train's host-reward call hands each completion its record's fields and reference."""
    path = tmp_path / "train.jsonl"
    path.write_text(TRL_JSONL)
    records = data_lib.read_seq2seq(str(path))
    texts = {"questions": [r.question for r in records], "targets": ["4", "hi"],
             "fields": [dict(r.fields) for r in records]}
    decode = {1: "\\boxed{4}", 2: "5", 3: "\\boxed{hi}", 4: "bye"}
    tok = types.SimpleNamespace(batch_decode=lambda rows, skip_special_tokens: [
        decode[int(r[0])] for r in rows])
    setup = types.SimpleNamespace(
        exp=types.SimpleNamespace(reader_tokenizer=tok),
        host_reward=rewards.make_host_reward(
            _reward_config(f"{HERE}:reward_func,{HERE}:math_reward_func")),
        config=types.SimpleNamespace(grpo=types.SimpleNamespace(group_size=2)))
    out = train._host_rewards(setup, np.array([[1], [2], [3], [4]]), texts)
    np.testing.assert_allclose(out.reshape(-1), [2.0, -1.0, 1.0, 0.0])


def test_host_l2_bleu_spans_the_global_batch(monkeypatch):
    """reward.bleu_norm='l2' on host divides by the l2 norm of BLEU over the global batch, as
    the device path does: two processes with two rows each (their Σ BLEU² summed by
    `distributed.sum_over_processes`) give the whole batch's rewards, not each half's own."""
    c = ["a b c d", "a b x y", "q r s t u", "a b c"]
    r = ["a b c d", "a b c d", "q r s t", "a b c d"]
    rc = _reward_config("f1rougebleu", backend="host", bleu_norm="l2")
    whole = rewards.make_host_reward(rc)(["q"] * 4, c, r)
    sq = [float(np.sum(rewards.host_text_scores(c[i:i + 2], r[i:i + 2])["bleu"] ** 2))
          for i in (0, 2)]
    assert distributed.sum_over_processes(sq[0]) == sq[0]  # one process: its own sum
    parts, alone = [], []
    for i, mine in ((0, sq[0]), (2, sq[1])):
        def both(x, mine=mine):
            """The all-reduce of two processes, seen from the one holding `mine`."""
            assert x == pytest.approx(mine)
            return sum(sq)
        monkeypatch.setattr(distributed, "sum_over_processes", both)
        parts.append(rewards.make_host_reward(rc)(["q"] * 2, c[i:i + 2], r[i:i + 2]))
        monkeypatch.setattr(distributed, "sum_over_processes", float)
        alone.append(rewards.make_host_reward(rc)(["q"] * 2, c[i:i + 2], r[i:i + 2]))
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-12)
    assert not np.allclose(np.concatenate(alone), whole)  # each half normalised alone
