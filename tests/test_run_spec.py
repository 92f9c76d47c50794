"""The resolved run spec: each mode's facts, worked out once from the config."""

import dataclasses

import pytest

from lapdog_jax import config_lib, run_spec
from lapdog_jax.config_lib import ConfigError

# mode -> (is_rl, step, trains_retriever, pool_size, warmup_steps, refresh_index) of the
# shipped embedded configs (pool 16, n_context 1, 500 warm-up steps, refresh every 20).
EXPECTED = {
    "sft": (False, "sft", False, 0, 0, 0),  # closed-book: n_context 0
    "lapdog": (False, "lapdog", True, 16, 500, 20),
    "reinforce": (True, "grpo_update", False, 1, 500, 0),
    "grpo": (True, "grpo_update", False, 1, 500, 0),
    "joint_grpo": (True, "grpo_update", True, 16, 500, 20),
    "seq2seq_grpo": (True, "grpo_update", False, 0, 200, 0),  # no retrieval
}


@pytest.mark.parametrize("mode", config_lib.MODES)
def test_each_mode_resolves_to_its_facts(mode):
    spec = run_spec.resolve(config_lib.mode_config(mode))
    got = (spec.is_rl, spec.step, spec.trains_retriever, spec.pool_size, spec.warmup_steps,
           spec.refresh_index)
    assert got == EXPECTED[mode]
    parts = ("reader", "retriever") if spec.trains_retriever else ("reader",)
    assert spec.trained_parts == parts and spec.reader_part == "reader" and not spec.lora


def test_fields_that_change_the_facts():
    """The pool is at least n_context; query-side training never refreshes the index; LoRA
    trains the adapters; host rewards and the host backend are told apart."""
    c = config_lib.mode_config("joint_grpo")
    c.data.n_context, c.retrieval.pool_size = 5, 3
    c.model.shared_retriever = False
    c.lora.rank = 4
    c.reward.fn, c.reward.fn_weights = "exact_match,mod:fn", (2.0, 0.5)
    spec = run_spec.resolve(c)
    assert (spec.pool_size, spec.n_passages, spec.refresh_index) == (5, 5, 0)
    assert spec.trained_parts == ("lora", "retriever") and spec.lora
    assert spec.reward_fns == (("exact_match", 2.0), ("mod:fn", 0.5))
    assert spec.device_reward and spec.host_reward
    c.reward.fn, c.reward.fn_weights, c.reward.backend = "length", (), "host"
    spec = run_spec.resolve(c)
    assert not spec.device_reward and spec.host_reward
    c.sft_warmup_steps = 7
    c.mode = "sft"  # no warm-up in stage 1
    assert run_spec.resolve(c).warmup_steps == 0


def test_spec_is_frozen_and_names_bad_flags():
    c = config_lib.mode_config("grpo")
    spec = run_spec.resolve(c)
    assert run_spec.resolve(config_lib.mode_config("grpo")) == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.pool_size = 3
    c.mode = "ppo"
    with pytest.raises(ConfigError, match=r"^--config\.mode=ppo: unknown mode"):
        run_spec.resolve(c)
    c.mode, c.reward.fn = "grpo", "exact_match,,length"
    with pytest.raises(ConfigError, match=r"^--config\.reward\.fn=exact_match,,length"):
        run_spec.resolve(c)
