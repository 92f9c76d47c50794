r"""Talk to a trained run: each turn shows the stories retrieved for the persona and the reply.

  python -m lapdog_jax.chat --workdir=runs/demo [--persona=persona.txt] [--k=3] \
      [--temperature=0] [--step=N]

Reads standard input: without `--persona`, the persona's lines come first, ended by an empty
line; then one message per line, until the end of input. Each message is put in the run's
dialogue format (`persona: ... context:  Q: ...`, the last three turns labelled counting back
from the end, LAPDOG's convention), the retriever's top `--k` stories are printed with their
scores, the reader reads the top `data.n_context` of them (the stories training fed it) and
its reply is printed as `R: ...`: greedy with `--temperature=0`, else sampled at that
temperature (the run's grpo.top_k / top_p apply). Prompts go to stderr, so stdout holds only
the stories and replies.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import jax
import numpy as np
from absl import flags

from lapdog_jax import cli, distributed, evaluate, experiment, steps
from lapdog_jax import workdir as workdir_lib
from lapdog_jax.data import Dialogue
from lapdog_jax.data import pipeline as pipe_lib

CONTEXT_TURNS = 3  # turns of the conversation the question carries (the data's 1-3)
MAX_GENERATORS = 4  # compiled reply generators a chat keeps (one per temperature)


def question(persona: list[str], turns: list[str]) -> str:
    """The run's dialogue question for a persona and the conversation so far (last = the
    user's message): LAPDOG labels turns counting back from the end, the last being Q."""
    recent = turns[-CONTEXT_TURNS:]
    context = " ".join(f"{'Q' if (len(recent) - 1 - i) % 2 == 0 else 'R'}: {t}"
                       for i, t in enumerate(recent))
    return f"persona: {' '.join(persona)} context:  {context}"


@dataclasses.dataclass
class Chat:
    """A restored run, ready to answer: `turn(persona, turns)` -> (stories, reply)."""

    exp: experiment.Experiment
    params: dict
    retriever: object  # retrieval.Retriever, None when closed-book
    models: steps.Models
    temperature: float  # the default of `turn` (0 = greedy)
    rng: jax.Array
    rows: int  # batch rows (the device count; the message is in row 0)
    step: int  # the restored checkpoint's training step
    # jitted generators by temperature, each made on its first reply (most recent last)
    _generators: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def restore(cls, workdir: str, step: int | None = None, temperature: float = 0.0,
                seed: int = 0) -> Chat:
        """Restores `workdir`'s checkpoint (default the latest) and its passage index."""
        exp, mesh, state, host, saved_index = workdir_lib.restore_workdir(workdir, "chat", step)
        retriever = workdir_lib.indexed_retriever(exp, state, host, saved_index)
        return cls(exp, state.params, retriever, experiment.step_models(exp), temperature,
                   jax.random.PRNGKey(seed), int(np.prod(list(mesh.shape.values()))),
                   workdir_lib.resumed_step(state, host))

    def stories(self, dialogue: Dialogue, k: int) -> list[tuple[str, float]]:
        """The retriever's top-k (passage id, score) for a dialogue."""
        if self.retriever is None:
            return []
        config = self.exp.config
        ids, mask = pipe_lib.encode_queries(
            [dialogue], self.exp.retriever_tokenizer,
            pipe_lib.Lengths.from_config(config.data).query_length, config.data.retriever_from)
        found, scores = self.retriever.search(
            self.retriever.embed(self.params["retriever"], ids, mask),
            min(k, len(self.retriever.passages)))
        return [(str(i), float(s)) for i, s in zip(found[0], scores[0], strict=True)]

    def reply(self, dialogue: Dialogue, story_ids: list[str], temperature: float | None = None
              ) -> str:
        """The reader's reply reading `story_ids` (closed-book when the run has no retriever),
        at `temperature` (default the chat's)."""
        config = self.exp.config
        pool = [story_ids] * self.rows if self.retriever is not None else None
        batch, _ = pipe_lib.make_batch(
            [dialogue] * self.rows, pool, self.retriever.by_id if self.retriever else {},
            pipe_lib.Tokenizers(self.exp.reader_tokenizer, self.exp.retriever_tokenizer),
            pipe_lib.Lengths.from_config(config.data), formats=experiment.formats(self.exp.spec))
        self.rng, rng = jax.random.split(self.rng)
        tokens = self._generator(self.temperature if temperature is None else temperature)(
            self.params, batch, rng)
        return self.exp.reader_tokenizer.decode(np.asarray(tokens)[0],
                                                skip_special_tokens=True).strip()

    def _generator(self, temperature: float):
        """The jitted generator at `temperature`, compiled on its first use; the chat keeps
        the last MAX_GENERATORS used."""
        temperature = float(temperature)
        made = self._generators.pop(temperature, None)
        if made is None:
            made = _generator(self.exp.config, self.exp.spec, self.models, temperature)
            while len(self._generators) >= MAX_GENERATORS:
                self._generators.pop(next(iter(self._generators)))
        self._generators[temperature] = made
        return made

    def turn(self, persona: list[str], turns: list[str], k: int,
             temperature: float | None = None) -> tuple[list[dict], str]:
        """(the top-k stories, each {id, title, text, score}, reply) for the conversation so
        far (the last turn is the user's message), the reply at `temperature` (default the
        chat's)."""
        dialogue = Dialogue(question=question(persona, turns), answers=("",))
        n = self.exp.spec.n_passages
        found = self.stories(dialogue, max(k, n))
        reply = self.reply(dialogue, [pid for pid, _ in found[:n]], temperature)
        return ([{**evaluate.passage(self.retriever, pid), "score": s}
                 for pid, s in found[:k]], reply)


def _generator(config, spec, models: steps.Models, temperature: float):
    """Jitted reply generator: greedy (evaluation's) or sampled at `temperature` (`spec`: the
    run's RunSpec)."""
    if temperature == 0:
        return jax.jit(functools.partial(steps.generate, models=models, config=config,
                                         spec=spec))
    sampled = config.copy_and_resolve_references()
    sampled.grpo.temperature = temperature

    def sample(params, batch, rng):
        """Sampled replies [B, T] from the top-n stories."""
        n = spec.n_passages
        reader = steps.policy_reader(params, sampled)
        enc, enc_mask = steps.encode_sources(models, reader, batch["reader_ids"][:, :n],
                                             batch["reader_mask"][:, :n], sampled)
        return steps.sample_completions(models, reader, enc, enc_mask, rng, sampled,
                                        greedy=False).tokens

    return jax.jit(sample)


def _read_persona(stream) -> list[str]:
    """Persona lines from `stream` up to the first empty line (or the end)."""
    lines = []
    for line in stream:
        if not line.strip():
            break
        lines.append(line.strip())
    return lines


def _define_flags() -> None:
    """The command line's flags (defined when run: the module imports without them)."""
    flags.DEFINE_string("workdir", None, "A training workdir (has config.json).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("persona", "", "File of persona lines ('' = read them from stdin "
                        "first, ended by an empty line).")
    flags.DEFINE_integer("k", 3, "Stories to show per turn.", lower_bound=1)
    flags.DEFINE_float("temperature", 0.0, "0 = greedy reply; > 0 = sampled at this "
                       "temperature.", lower_bound=0.0)
    flags.DEFINE_integer("seed", 0, "Sampling seed (with --temperature > 0).")


def main():
    """CLI: reads the persona and messages from stdin, prints stories and replies."""
    f = flags.FLAGS
    if f.persona:
        try:
            with open(f.persona, encoding="utf-8") as lines:
                persona = [line.strip() for line in lines if line.strip()]
        except OSError as e:
            raise experiment.ConfigError(f"--persona={f.persona}: cannot read "
                                         f"({e.strerror})") from None
    else:
        persona = None
    distributed.initialize()
    chat = Chat.restore(f.workdir, f.step, f.temperature, f.seed)
    interactive = sys.stdin.isatty()
    if persona is None:
        if interactive:
            sys.stderr.write("persona (one sentence a line, an empty line to end):\n")
        persona = _read_persona(sys.stdin)
    if not persona:
        raise experiment.ConfigError("no persona: give --persona=FILE or type its lines first")
    turns = []
    while True:
        if interactive:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        turns.append(line.strip())
        stories, reply = chat.turn(persona, turns, f.k)
        for rank, story in enumerate(stories, start=1):
            print(f"  story {rank}: {story['title']} ({story['score']:.3f}) [{story['id']}]")
        print(f"R: {reply}", flush=True)
        turns.append(reply)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["workdir"])
    cli.run(main)
