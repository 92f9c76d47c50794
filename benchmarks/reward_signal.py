r"""The reward signal per retrieved story: does the right story earn a higher GRPO reward than
the wrong ones, and by how much relative to the reward's noise within a group?

    PYTHONPATH=. python benchmarks/reward_signal.py --workdir=runs/ablation/seed-0/joint_grpo \
        [--dialogues=64 --group_size=8 --pool=16 --split=valid --out=FILE.json]

Restores the workdir's latest checkpoint (reader, retriever and the index it was searching)
and, for each of the first N dialogues of --split (valid = the run's eval set, train), takes
its retriever pool of K stories and samples G answers from the reader with each story (the
rollout's sampler and temperature), scored by the run's device reward (`reward.fn`). Prints,
over the dialogues whose gold story is in the pool:
  reward of the gold story (mean of its G answers) and of the wrong stories (each a mean of G),
  the gap gold - wrong (mean over wrong stories, and against the best wrong story),
  the within-group noise: std of the G answers' rewards with one story (pooled), and the
  standard error of one story's mean reward (that std / sqrt(G)), the scale a story's GRPO
  advantage is measured against,
  how often the gold story's mean beats a wrong story's (pairwise) and beats them all,
and the same split by whether the wrong story shares the gold story's topic (its title words).
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lapdog_jax import experiment, rewards, steps
from lapdog_jax import workdir as workdir_lib
from lapdog_jax.data import synthetic


def story_topics() -> dict[str, str]:
    """Synthetic story title -> its topic's name (pet, trip, music, car, food)."""
    return {title.format(K=kind.capitalize()): t.name for t in synthetic.TOPICS
            for title in t.titles for kind in t.kinds}


def story_rewards_fn(models: steps.Models, config, group_size: int):
    """jit(params, batch, rng) -> rewards [B, K, G]: G sampled answers with each pool story."""
    device_reward = rewards.make_device_reward(config.reward, models.special_ids,
                                               models.word_start_ids)

    def fn(params, batch, rng):
        B, K, S = batch["reader_ids"].shape
        reader = steps.policy_reader(params, config)
        enc, mask = steps.encode_sources(models, reader, batch["reader_ids"].reshape(B * K, 1, S),
                                         batch["reader_mask"].reshape(B * K, 1, S), config)
        s = steps.sample_completions(models, reader, enc, mask, rng, config, greedy=False,
                                     group_size=group_size)
        ref = jnp.repeat(batch["target_ids"], K * group_size, axis=0)
        return device_reward(s.tokens, ref).reshape(B, K, group_size)

    return jax.jit(fn)


def summarise(r_BxKxG: np.ndarray, gold_BxK: np.ndarray, same_topic_BxK: np.ndarray) -> dict:
    """The statistics of the module docstring from rewards [B,K,G], the gold mask [B,K] and
    whether each pool story shares the gold story's topic [B,K]."""
    has_gold = gold_BxK.any(1)
    r, gold, same = r_BxKxG[has_gold], gold_BxK[has_gold], same_topic_BxK[has_gold]
    G = r.shape[-1]
    means = r.mean(-1)  # [B,K] a story's mean reward over its G answers
    within = float(np.sqrt(r.var(-1, ddof=1).mean()))  # pooled std of answers with one story
    g = means[gold]  # [B'] (one gold story per dialogue)
    wrong = ~gold
    out = {"dialogues": int(has_gold.sum()), "dialogues_without_gold_in_pool":
           int((~has_gold).sum()), "group_size": G, "pool": int(r.shape[1]),
           "gold_reward": float(g.mean()), "wrong_reward": float(means[wrong].mean()),
           "gap_vs_mean_wrong": float((g - np.where(wrong, means, 0).sum(1)
                                       / wrong.sum(1)).mean()),
           "gap_vs_best_wrong": float((g - np.where(wrong, means, -np.inf).max(1)).mean()),
           "within_group_std": within, "story_mean_stderr": within / np.sqrt(G),
           "gold_beats_wrong_pairwise": float((g[:, None] > means)[wrong].mean()),
           "gold_beats_all_wrong": float((g > np.where(wrong, means, -np.inf).max(1)).mean())}
    for name, sel in (("same_topic", wrong & same), ("other_topic", wrong & ~same)):
        if sel.any():
            out[f"wrong_{name}_reward"] = float(means[sel].mean())
            out[f"wrong_{name}_count"] = int(sel.sum())
            out[f"gold_beats_{name}_pairwise"] = float((g[:, None] > means)[sel].mean())
    out["gap_over_stderr"] = out["gap_vs_mean_wrong"] / max(out["story_mean_stderr"], 1e-9)
    out["gap_over_within_std"] = out["gap_vs_mean_wrong"] / max(within, 1e-9)
    return out


def measure(workdir: str, dialogues: int, group_size: int, pool: int, split: str,
            seed: int = 0) -> dict:
    """Restores `workdir` and returns `summarise` of its reward signal."""
    exp, _, state, host_state, saved_index = workdir_lib.restore_workdir(workdir, "evaluate")
    config = exp.config
    models = experiment.step_models(exp)
    retriever = workdir_lib.indexed_retriever(exp, state, host_state, saved_index)
    chosen = (exp.valid if split == "valid" else exp.train)[:dialogues]
    k = min(pool, len(retriever.passages))
    pipeline = experiment.make_pipeline(
        exp, chosen, retriever, min(config.batch_size, len(chosen)),
        retriever.pool_fn(state.params["retriever"], k), shuffle=False)
    fn = story_rewards_fn(models, config, group_size)
    params = jax.device_get(state.params)
    titles = story_topics()
    topic = {p.id: titles.get(p.title, p.title) for p in exp.passages}
    rs, golds, sames = [], [], []
    rng = jax.random.PRNGKey(seed)
    for i, (batch, info) in enumerate(pipeline.eval_batches()):
        n = info["num_valid"]
        batch = {key: v for key, v in batch.items() if key.startswith(("reader", "target"))}
        r = np.asarray(fn(params, batch, jax.random.fold_in(rng, i)))[:n]
        pools = info["pool_passage_ids"][:n]
        gold = np.array([[pid in g for pid in p] for p, g
                         in zip(pools, info["gold_passage_ids"][:n], strict=True)])
        same = np.array([[topic[pid] == topic[g[0]] for pid in p] for p, g
                         in zip(pools, info["gold_passage_ids"][:n], strict=True)])
        rs.append(r)
        golds.append(gold)
        sames.append(same)
    out = summarise(np.concatenate(rs), np.concatenate(golds), np.concatenate(sames))
    out.update(workdir=workdir, step=workdir_lib.resumed_step(state, host_state), split=split,
               reward=config.reward.fn)
    return out


def main(argv: list[str]) -> None:
    """Prints (and with --out writes) the measurement."""
    from absl import flags

    del argv
    f = flags.FLAGS
    out = measure(f.workdir, f.dialogues, f.group_size, f.pool, f.split, f.seed)
    text = json.dumps(out, indent=1)
    print(text)
    if f.out:
        with open(f.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "a training workdir with a checkpoint", required=True)
    flags.DEFINE_integer("dialogues", 64, "dialogues measured (the first N of --split)")
    flags.DEFINE_integer("group_size", 8, "answers sampled per (dialogue, story)")
    flags.DEFINE_integer("pool", 16, "retriever pool: stories per dialogue")
    flags.DEFINE_enum("split", "valid", ["valid", "train"], "which dialogues")
    flags.DEFINE_integer("seed", 0, "sampling seed")
    flags.DEFINE_string("out", "", "also write the JSON here")
    sys.path.insert(0, ".")
    app.run(main)
