r"""How far token-id gold scores rank a pool differently from LAPDOG's text-level ones.

    PYTHONPATH=. python benchmarks/gold_rank_correlation.py --data=PATH/convai2/valid.jsonl \
        [--pools=1000 --pool_size=6 --batch=8 --vocab_size=8000]

LAPDOG stage 2 distils the retriever towards the gold score of each pool passage: F1 + ROUGE-L
+ BLEU/‖BLEU‖₂ of the answer the reader gives with that passage. LAPDOG scores decoded text
(whitespace F1, `rouge`, sacrebleu 13a: `reward.backend='host'`); `reward.backend='device'`
scores SentencePiece ids (`rewards.gold_score`). This builds pools of K candidate answers per
ConvAI2 line from the other lines' answers — the K most word-overlapping with the reference
('near': what a reader reading different stories says, roughly) and K drawn at random
('random') — scores each pool both ways, with BLEU's l2 norm over batches of `--batch`
pools as in a step, and prints per pool kind the mean Spearman and Kendall rank correlation
between the two (pools whose scores are all tied left out) and how often the two agree on the
best candidate. The SentencePiece (`lapdog_jax.data.tokenizer`) is trained on the file's
questions and answers.
"""

import os
import tempfile

import jax
import numpy as np
from absl import app, flags
from scipy import stats

from lapdog_jax import config_lib, rewards
from lapdog_jax.data import read_dialogues
from lapdog_jax.data import tokenizer as tok_lib


def pools(answers: list[str], n: int, k: int, rng) -> dict[str, list[list[int]]]:
    """{kind: n pools of k indices of other answers}: 'near' (most shared words with the
    reference, ties broken at random) and 'random'."""
    words = [set(a.split()) for a in answers]
    queries = rng.choice(len(answers), size=n, replace=False)
    out = {"near": [], "random": []}
    for q in queries:
        overlap = np.array([len(words[q] & w) / max(len(words[q] | w), 1) for w in words])
        overlap[q] = -1.0
        order = np.lexsort((rng.random(len(answers)), -overlap))
        out["near"].append([int(q), *order[:k].tolist()])
        others = np.delete(np.arange(len(answers)), q)
        out["random"].append([int(q), *rng.choice(others, size=k, replace=False).tolist()])
    return out


def encode(tok, texts: list[str], width: int) -> np.ndarray:
    """Ids [N, width] of `texts` + EOS, right-padded (as a reader's answers and targets)."""
    ids = np.zeros((len(texts), width), np.int32)
    for i, t in enumerate(texts):
        row = tok(t, add_special_tokens=True)["input_ids"][:width]
        ids[i, :len(row)] = row
    return ids


def score_both(pool_rows, answers, tok, rc, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(text-level, token-id) gold scores [P, K] of the pools, l2 norm over `batch` pools."""
    gold = jax.jit(rewards.gold_score(rc, tok_lib.special_ids(tok)))
    text_out, ids_out = [], []
    for start in range(0, len(pool_rows), batch):
        chunk = pool_rows[start:start + batch]
        refs = [answers[row[0]] for row in chunk for _ in row[1:]]
        cands = [answers[j] for row in chunk for j in row[1:]]
        text = rewards.host_combined_reward(cands, refs, tuple(rc.weights), rc.bleu_norm,
                                            rc.length_penalty)
        ids = np.asarray(gold(encode(tok, cands, 48), encode(tok, refs, 48)))
        text_out.append(text.reshape(len(chunk), -1))
        ids_out.append(ids.reshape(len(chunk), -1))
    return np.concatenate(text_out), np.concatenate(ids_out)


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_string("data", None, "LAPDOG dialogue jsonl (ConvAI2)", required=True)
    flags.DEFINE_integer("pools", 1000, "pools measured")
    flags.DEFINE_integer("pool_size", 6, "stories per pool")
    flags.DEFINE_integer("batch", 8, "pools per device batch")
    flags.DEFINE_integer("vocab_size", 8000, "SentencePiece vocabulary trained on the data")
    flags.DEFINE_integer("seed", 0, "sampling seed")


def main(argv):
    """Prints the rank agreement of the two gold scores per pool kind."""
    del argv
    args = flags.FLAGS
    dialogues = read_dialogues(args.data)
    answers = [d.answers[0] for d in dialogues]
    with tempfile.TemporaryDirectory() as tmp:
        tok = tok_lib.train_sentencepiece([d.question for d in dialogues] + answers,
                                          os.path.join(tmp, "tok"), args.vocab_size)
    rc = config_lib.mode_config("lapdog", "base").reward  # F1 + ROUGE-L + BLEU/‖BLEU‖₂
    rng = np.random.default_rng(args.seed)
    print(f"{os.path.basename(args.data)}: {len(dialogues)} lines, {args.pools} pools of "
          f"K={args.pool_size}, l2 over {args.batch} pools, SentencePiece {len(tok)} ids, "
          f"weights {tuple(rc.weights)} bleu_norm {rc.bleu_norm}")
    print(f"{'pools':8s} {'spearman':>9s} {'kendall':>8s} {'same best':>10s} {'tied':>5s}")
    for kind, rows in pools(answers, args.pools, args.pool_size, rng).items():
        text, ids = score_both(rows, answers, tok, rc, args.batch)
        rho, tau, tied = [], [], 0
        for t, i in zip(text, ids, strict=True):
            if np.ptp(t) == 0 or np.ptp(i) == 0:
                tied += 1
                continue
            rho.append(stats.spearmanr(t, i).statistic)
            tau.append(stats.kendalltau(t, i).statistic)
        same = np.mean(np.argmax(text, 1) == np.argmax(ids, 1))
        print(f"{kind:8s} {np.mean(rho):9.3f} {np.mean(tau):8.3f} {same:10.3f} {tied:5d}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
