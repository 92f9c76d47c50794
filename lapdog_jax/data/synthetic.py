"""The embedded dataset: persona dialogues whose answers need a fact from one story.

Each story belongs to a character (job, home city, hobby, and a topic such as a pet or a trip)
and holds one fact about the topic (the pet's name, the city visited, ...) that no other story
of that topic holds. A dialogue gives the character's persona (paraphrased, shuffled, with
filler sentences) and a partner question about the topic; the answer is a short formula with
the fact, e.g. "my dog is called biscuit .". Stories mention the character's job and hobby
mostly through associated words (a nurse's story speaks of the hospital), and distractor stories
share topic words and attributes, so bag-of-words retrieval is only partly right while a trained
retriever can learn the associations.

Two splits of the characters (`split`):
  shared   train and valid dialogues are drawn from the same characters (a reader can answer
           a valid dialogue from the facts it memorised in training, without reading);
  heldout  `num_heldout` characters are valid-only and as many test-only: their stories are in
           the corpus, but no training dialogue is theirs, so their facts are in no training
           answer and only a reader that reads the retrieved story can answer them. Facts are
           two words here ("captain luna", "spicy curry"); each word of a held-out fact is in
           some training answer, the pair in none, so the reader can copy it from the story.
           (`fact_words=1`: one word, which several training characters of the topic share.)
           The answer's template is the one paired with the question's ("what is your dog
           called ?" -> "my dog is called biscuit ."), so the whole answer follows from the
           input and from the story: a reader that copies can be exactly right.

    python -m lapdog_jax.data.synthetic --out=DIR [--split=heldout --seed=0 --num_train=2000 ...]

writes train.jsonl, valid.jsonl (and test.jsonl for the held-out split) and stories.jsonl
(LAPDOG formats, with `gold_passage_ids`) plus split.json (which stories' characters are in
which split); `python -m lapdog_jax.baselines --data=DIR` prints what retrieval gets on it
before training.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import numpy as np
from absl import flags

from lapdog_jax import cli
from lapdog_jax.config_lib import ConfigError
from lapdog_jax.data import (
    Dialogue,
    Passage,
    dialogue_record,
    passage_record,
    write_jsonl,
)

TRAIN_FILE, VALID_FILE, STORIES_FILE = "train.jsonl", "valid.jsonl", "stories.jsonl"
TEST_FILE, SPLIT_FILE = "test.jsonl", "split.json"
SPLITS = ("shared", "heldout")

# job -> words of its workplace that stories use instead of (or beside) the job itself.
JOBS = {
    "nurse": ["hospital", "patients", "ward"], "teacher": ["school", "students", "classroom"],
    "chef": ["restaurant", "kitchen", "menu"], "pilot": ["airport", "plane", "cockpit"],
    "farmer": ["farm", "barn", "tractor"], "mechanic": ["garage", "engines", "wrench"],
    "lawyer": ["court", "judge", "case"], "baker": ["bakery", "oven", "bread"],
    "firefighter": ["station", "truck", "hose"], "librarian": ["library", "shelves", "books"],
    "dentist": ["clinic", "teeth", "drill"], "fisherman": ["harbor", "boat", "nets"],
    "plumber": ["pipes", "sink", "leak"], "cashier": ["store", "register", "customers"],
}
# hobby (as in "i love {hobby}") -> words a story about doing it would use.
HOBBIES = {
    "painting": ["canvas", "brushes", "colors"], "hiking": ["trail", "mountain", "boots"],
    "gardening": ["garden", "tomatoes", "soil"], "knitting": ["yarn", "needles", "scarf"],
    "surfing": ["waves", "board", "beach"], "chess": ["board", "pieces", "tournament"],
    "fishing": ["lake", "rod", "bait"], "running": ["race", "miles", "shoes"],
    "singing": ["choir", "songs", "stage"], "baking": ["cake", "flour", "oven"],
    "camping": ["tent", "fire", "woods"], "dancing": ["music", "steps", "partner"],
}
CITIES = ["boston", "denver", "seattle", "austin", "chicago", "miami", "phoenix", "portland",
          "detroit", "atlanta", "dallas", "memphis"]
NAMES = ["biscuit", "pepper", "luna", "ziggy", "coco", "rocky", "daisy", "milo", "bella",
         "oscar", "ruby", "toby", "nala", "shadow", "pickles", "waffles", "peanut", "ginger",
         "bruno", "maple", "olive", "rusty", "sunny", "pumpkin", "noodle", "buster", "clover",
         "hazel", "jasper", "willow", "mocha", "ollie", "pixie", "domino", "sprout", "tango",
         "marble", "cricket", "bandit", "juniper"]
PLACES = ["lisbon", "kyoto", "cairo", "oslo", "lima", "dublin", "vienna", "prague", "havana",
          "nairobi", "sydney", "athens", "bangkok", "quebec", "seoul", "zurich", "istanbul",
          "marrakesh", "reykjavik", "budapest", "santiago", "helsinki", "naples", "bali",
          "madrid", "berlin", "tokyo", "rome", "paris", "london", "mumbai", "toronto",
          "warsaw", "geneva", "venice", "amsterdam", "brussels", "krakow", "porto", "hanoi"]
INSTRUMENTS = ["violin", "cello", "banjo", "flute", "trumpet", "drums", "harp", "ukulele",
               "saxophone", "piano", "guitar", "clarinet", "accordion", "harmonica", "oboe",
               "trombone", "mandolin", "tuba", "bagpipes", "xylophone"]
COLORS = ["red", "blue", "green", "black", "white", "silver", "yellow", "orange"]
CARS = ["truck", "van", "jeep", "sedan", "wagon"]
DISHES = ["lasagna", "curry", "gumbo", "paella", "ramen", "chili", "risotto", "tacos",
          "dumplings", "meatloaf", "goulash", "pho", "burritos", "stew", "pancakes", "sushi",
          "falafel", "kebabs", "pierogi", "moussaka", "enchiladas", "jambalaya", "casserole",
          "omelets", "brisket", "ravioli", "gnocchi", "noodles", "cornbread", "quiche"]
FILLERS = ["i like the color {c} .", "i have two brothers .", "i drink coffee every morning .",
           "i am afraid of the dark .", "i wear glasses .", "my favorite season is fall .",
           "i do not like sports .", "i listen to jazz .", "i am an only child .",
           "i go to bed early .", "i love old movies .", "i am allergic to peanuts .",
           "my mom is a teacher .", "i hate mondays .", "i like to sleep in ."]
# The held-out split's facts are two words, (modifier, base), per topic: a held-out character's
# pair is in no training answer, but each of its words is in some training answer of its topic
# (so a reader can write it by copying from the story, and cannot by recalling a memorised one).
FACT_WORDS = {
    "pet": (("captain", "little", "lady", "sir", "miss", "big", "old", "baby"), tuple(NAMES)),
    "trip": (("north", "south", "east", "west", "old", "new", "upper", "lower"), tuple(PLACES)),
    "music": (("electric", "bass", "tenor", "alto", "wooden", "silver", "tiny", "old"),
              tuple(INSTRUMENTS)),
    "car": (tuple(COLORS), tuple(CARS)),
    "food": (("spicy", "sweet", "smoked", "creamy", "baked", "fried", "vegan", "cheesy"),
             tuple(DISHES)),
}
# fact_words=1: one word a fact, ten a topic; with many training characters each word is the
# fact of several of them, so that it is learnt as something to copy from the story rather than
# as one character's memorised fact.
ONE_WORD_FACTS = {"pet": tuple(NAMES[:10]), "trip": tuple(PLACES[:10]),
                  "music": tuple(INSTRUMENTS[:10]),
                  "car": tuple(CARS) + ("bus", "coupe", "pickup", "camper", "minivan"),
                  "food": tuple(DISHES[:10])}
OPENERS = [("hi , how are you today ?", "good , thanks ."),
           ("hello ! what are you up to ?", "just relaxing ."),
           ("hey there , nice to meet you .", "nice to meet you too !"),
           ("how was your weekend ?", "great , very relaxing ."),
           ("good evening ! busy day ?", "yes , very busy .")]


@dataclasses.dataclass(frozen=True)
class Topic:
    """A kind of fact: persona hint, partner questions, answers, and story sentences."""

    name: str
    hints: tuple[str, ...]  # persona sentences announcing the topic ({k} = kind)
    questions: tuple[str, ...]  # the partner's last turn ({k} = kind)
    answers: tuple[str, ...]  # the reply holding the fact ({k} kind, {f} fact)
    story: tuple[str, ...]  # story sentences stating the fact
    titles: tuple[str, ...]
    kinds: tuple[str, ...]  # sub-kinds shared across stories (topic words for distractors)
    facts: tuple[str, ...]  # fact vocabulary (unique per story within the topic)


TOPICS = (
    Topic("pet", ("i have a {k} .", "i own a {k} .", "my best friend is my {k} ."),
          ("what is your {k} called ?", "what is the name of your {k} ?"),
          ("my {k} is called {f} .", "my {k} is named {f} ."),
          ("my {k} {f} was waiting for me at the door .", "i named my {k} {f} ."),
          ("My {K}", "A Good {K}", "The New {K}"),
          ("dog", "cat", "parrot", "rabbit", "horse", "hamster", "turtle"), tuple(NAMES)),
    Topic("trip", ("i love to travel .", "i like visiting new countries ."),
          ("where did you go on your last trip ?", "where was your last vacation ?"),
          ("i went to {f} last summer .", "my last trip was to {f} ."),
          ("last summer i flew to {f} for a week .", "i finally took a trip to {f} ."),
          ("The Trip", "Vacation", "Far Away"), ("trip",), tuple(PLACES)),
    Topic("music", ("i play an instrument .", "i love making music ."),
          ("what instrument do you play ?", "what do you play ?"),
          ("i play the {f} .", "i play the {f} every day ."),
          ("i took out my {f} and practiced for hours .", "my old {f} was a gift ."),
          ("Practice", "The Concert", "Music Lessons"), ("music",), tuple(INSTRUMENTS)),
    Topic("car", ("i drive to work every day .", "i love my car ."),
          ("what do you drive ?", "what kind of car do you have ?"),
          ("i drive a {f} .", "i have an old {f} ."),
          ("i drove my {f} across town .", "my {f} broke down on the highway ."),
          ("The Drive", "Car Trouble", "On The Road"), ("car",),
          tuple(f"{c} {v}" for c, v in itertools.product(COLORS, CARS))),
    Topic("food", ("i love to cook .", "i enjoy trying new recipes ."),
          ("what is your favorite dish ?", "what do you like to cook ?"),
          ("my favorite dish is {f} .", "i love to cook {f} ."),
          ("i cooked a big pot of {f} for my family .", "i made {f} for dinner ."),
          ("Dinner", "The Recipe", "Cooking Night"), ("food",), tuple(DISHES)),
)


@dataclasses.dataclass(frozen=True)
class Character:
    """The person behind one story and the dialogues whose gold story it is."""

    job: str
    city: str
    hobby: str
    topic: Topic
    kind: str
    fact: str


def _pick(rng: np.random.Generator, seq):
    """One uniformly chosen element of `seq`."""
    return seq[int(rng.integers(len(seq)))]


def _characters(rng: np.random.Generator, num: int) -> list[Character]:
    """`num` characters with distinct (job, city, hobby, kind) and facts unique per topic."""
    facts = {t.name: list(rng.permutation(len(t.facts))) for t in TOPICS}
    seen, out = set(), []
    while len(out) < num:
        topic = TOPICS[len(out) % len(TOPICS)]
        key = (_pick(rng, list(JOBS)), _pick(rng, CITIES), _pick(rng, list(HOBBIES)),
               _pick(rng, topic.kinds))
        if key in seen:
            continue
        seen.add(key)
        n_used = sum(1 for c in out if c.topic.name == topic.name)
        fact = topic.facts[facts[topic.name][n_used % len(topic.facts)]]
        if n_used >= len(topic.facts):  # more stories than facts: make the fact unique
            fact = f"{fact} {n_used // len(topic.facts) + 1}"
        out.append(Character(*key[:3], topic=topic, kind=key[3], fact=fact))
    return out


def _story(rng: np.random.Generator, c: Character, index: int) -> Passage:
    """A four-sentence first-person story about `c` holding `c.fact`."""
    work = list(rng.permutation(JOBS[c.job]))
    hobby = list(rng.permutation(HOBBIES[c.hobby]))
    job_line = _pick(rng, [f"at work the {work[0]} and the {work[1]} kept me busy all day .",
                           f"i came home tired from the {work[0]} .",
                           f"being a {c.job} , i spent the day with the {work[0]} ."])
    city_line = _pick(rng, [f"it was a cold evening in {c.city} .",
                            f"the weather in {c.city} was lovely .",
                            f"back home in {c.city} it was raining ."])
    hobby_line = _pick(rng, [f"later i got the {hobby[0]} ready for the weekend .",
                             f"i spent the morning with the {hobby[0]} and the {hobby[1]} .",
                             f"i thought about {c.hobby} and the {hobby[0]} ."])
    fact_line = _pick(rng, c.topic.story).format(k=c.kind, f=c.fact)
    lines = [job_line, city_line, hobby_line]
    lines.insert(int(rng.integers(4)), fact_line)
    title = _pick(rng, c.topic.titles).format(K=c.kind.capitalize())
    return Passage(id=f"story-{index:05d}", title=title, text=" ".join(lines))


def _persona(rng: np.random.Generator, c: Character) -> str:
    """Shuffled, paraphrased persona sentences of `c` with at most one filler."""
    lines = [_pick(rng, [f"i work as a {c.job} .", f"i am a {c.job} .",
                         f"my job is being a {c.job} ."]),
             _pick(rng, [f"i live in {c.city} .", f"i grew up in {c.city} .",
                         f"my home is {c.city} ."]),
             _pick(rng, [f"i love {c.hobby} .", f"in my free time i enjoy {c.hobby} .",
                         f"{c.hobby} is my hobby ."]),
             _pick(rng, c.topic.hints).format(k=c.kind)]
    for i in rng.choice(len(FILLERS), size=int(rng.integers(0, 2)), replace=False):
        lines.append(FILLERS[i].format(c=_pick(rng, COLORS)))
    return " ".join(lines[i] for i in rng.permutation(len(lines)))


def _dialogue(rng: np.random.Generator, c: Character, story_id: str,
              answer_follows_question: bool = False) -> Dialogue:
    """One dialogue: persona, 1-3 turns of context ending in the partner's question. The
    answer's template is drawn at random, or with `answer_follows_question` is the one paired
    with the question's (so that the whole answer, not only its fact, follows from the input)."""
    opener, reply = _pick(rng, OPENERS)
    q = int(rng.integers(len(c.topic.questions)))
    question = c.topic.questions[q].format(k=c.kind)
    turns = [opener, reply, question][-int(rng.integers(1, 4)):]
    # LAPDOG labels turns counting back from the end: the last one is always the partner (Q).
    labels = ["Q" if (len(turns) - 1 - i) % 2 == 0 else "R" for i in range(len(turns))]
    context = " ".join(f"{lab}: {t}" for lab, t in zip(labels, turns, strict=True))
    template = (c.topic.answers[q % len(c.topic.answers)] if answer_follows_question
                else _pick(rng, c.topic.answers))
    answer = template.format(k=c.kind, f=c.fact)
    return Dialogue(question=f"persona: {_persona(rng, c)} context:  {context}",
                    answers=(answer,), gold_passage_ids=(story_id,))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The dialogues of each split, the story corpus, and the story ids of each split's
    characters (`split_stories`: train / valid / test -> ids; all ids for every split when the
    characters are shared)."""

    train: list[Dialogue]
    valid: list[Dialogue]
    test: list[Dialogue]
    stories: list[Passage]
    split: str
    split_stories: dict[str, tuple[str, ...]]


def _heldout_characters(rng: np.random.Generator, chars: list[Character],
                        num_heldout: int) -> tuple[list[int], list[int], list[int]]:
    """(train, valid, test) character indices: `num_heldout` each for valid and test, spread
    over the topics (a random order, taking each topic's k-th character before any topic's
    k+1-th), the rest for training."""
    rank, order = {}, []
    for i in rng.permutation(len(chars)):
        topic = chars[i].topic.name
        order.append((rank.get(topic, 0), len(order), int(i)))
        rank[topic] = rank.get(topic, 0) + 1
    picked = [i for _, _, i in sorted(order)]
    valid, test = picked[:num_heldout], picked[num_heldout:2 * num_heldout]
    held = set(valid + test)
    return [i for i in range(len(chars)) if i not in held], sorted(valid), sorted(test)


def _compose_facts(rng: np.random.Generator, chars: list[Character],
                   train: list[int], fact_words: int = 2) -> list[Character]:
    """`chars` with held-out-split facts. Two words (FACT_WORDS): distinct pairs within each
    topic; a held-out character's (not in `train`) pair is made of a modifier and a base that
    training characters of its topic have, in a combination no training character has. One
    word (ONE_WORD_FACTS): each word the fact of about as many training characters of its
    topic; a held-out character's word is one that training characters of its topic have."""
    out = list(chars)
    in_train = set(train)
    for topic in TOPICS:
        members = [i for i, c in enumerate(chars) if c.topic.name == topic.name]
        trained = [i for i in members if i in in_train]
        held = [i for i in members if i not in in_train]
        if fact_words == 1:
            bases = list(rng.permutation(ONE_WORD_FACTS[topic.name]))
            for j, i in enumerate(trained):
                out[i] = dataclasses.replace(chars[i], fact=str(bases[j % len(bases)]))
            seen = bases[:len(trained)]
            if held and not seen:
                raise ValueError(f"the held-out split needs a training character of each "
                                 f"topic; topic {topic.name!r} has none (raise num_stories "
                                 "or lower num_heldout)")
            for i in held:
                out[i] = dataclasses.replace(chars[i], fact=str(_pick(rng, seen)))
            continue
        mods, bases = (list(rng.permutation(w)) for w in FACT_WORDS[topic.name])
        # More characters than pairs: the pairs again with a number ("red van 2"), like the
        # shared split's facts.
        rounds = range(1, len(members) // (len(mods) * len(bases)) + 2)
        pairs = [(m, b) + ((str(r),) if r > 1 else ()) for r in rounds for m in mods for b in bases]
        used = set()
        for j, i in enumerate(trained):  # the diagonal first: as many distinct words as can be
            pair = (mods[j % len(mods)], bases[j % len(bases)])
            if pair in used:
                pair = next(p for p in pairs if p not in used)
            used.add(pair)
            out[i] = dataclasses.replace(chars[i], fact=" ".join(pair))
        words = {w for p in used for w in p}
        free = [p for p in pairs if p not in used and set(p) <= words]
        if held and len(free) < len(held):
            raise ValueError(f"the held-out split needs at least 2 training characters of each "
                             f"topic; topic {topic.name!r} has {len(trained)} (raise num_stories "
                             "or lower num_heldout)")
        for k, i in zip(rng.permutation(len(free))[:len(held)], held, strict=False):
            out[i] = dataclasses.replace(chars[i], fact=" ".join(free[k]))
    return out


def make_splits(seed: int = 0, num_train: int = 2000, num_valid: int = 200,
                num_stories: int = 200, split: str = "shared",
                num_heldout: int = 8, fact_words: int = 2) -> Dataset:
    """The dataset of `split` ('shared' or 'heldout'; SPLITS), deterministic in all arguments.

    'shared' draws train and valid dialogues from all characters and has no test dialogues (the
    split of earlier versions, unchanged). 'heldout' keeps `num_heldout` characters for valid
    and as many for test: `num_valid` dialogues each, none of them in training; its facts are
    `fact_words` (1 or 2) words (`_compose_facts`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if fact_words not in (1, 2):
        raise ValueError(f"fact_words must be 1 or 2, got {fact_words!r}")
    if min(num_train, num_valid, num_stories) < 1:
        raise ValueError("num_train, num_valid and num_stories must be positive")
    if split == "heldout" and (num_heldout < 1 or num_stories < 2 * num_heldout + 1):
        raise ValueError(f"the held-out split needs num_heldout >= 1 and num_stories >= "
                         f"2 * num_heldout + 1, got num_heldout={num_heldout}, "
                         f"num_stories={num_stories}")
    rng = np.random.default_rng(seed)
    chars = _characters(rng, num_stories)
    if split == "shared":
        stories = [_story(rng, c, i) for i, c in enumerate(chars)]
        ids = tuple(p.id for p in stories)
        gold = rng.integers(num_stories, size=num_train + num_valid)
        dialogues = [_dialogue(rng, chars[g], stories[g].id) for g in gold]
        return Dataset(dialogues[:num_train], dialogues[num_train:], [], stories, split,
                       {"train": ids, "valid": ids, "test": ()})
    parts = dict(zip(("train", "valid", "test"), _heldout_characters(rng, chars, num_heldout),
                     strict=True))
    chars = _compose_facts(rng, chars, parts["train"], fact_words)
    stories = [_story(rng, c, i) for i, c in enumerate(chars)]
    ids = tuple(p.id for p in stories)
    sizes = {"train": num_train, "valid": num_valid, "test": num_valid}
    out = {}
    for name, members in parts.items():
        gold = rng.choice(members, size=sizes[name])
        out[name] = [_dialogue(rng, chars[g], stories[g].id, answer_follows_question=True)
                     for g in gold]
    return Dataset(out["train"], out["valid"], out["test"], stories, split,
                   {name: tuple(ids[i] for i in members) for name, members in parts.items()})


def make_dataset(seed: int = 0, num_train: int = 2000, num_valid: int = 200,
                 num_stories: int = 200, split: str = "shared", num_heldout: int = 8,
                 fact_words: int = 2) -> tuple[list[Dialogue], list[Dialogue], list[Passage]]:
    """Returns (train, valid, stories) of `make_splits`, deterministic in all arguments."""
    d = make_splits(seed, num_train, num_valid, num_stories, split, num_heldout, fact_words)
    return d.train, d.valid, d.stories


def generate(out_dir: str, seed: int = 0, num_train: int = 2000, num_valid: int = 200,
             num_stories: int = 200, split: str = "shared", num_heldout: int = 8,
             fact_words: int = 2) -> dict[str, str]:
    """Writes train/valid(/test)/stories jsonl and split.json to `out_dir`; returns
    {'train', 'valid', 'passages', 'split'} (+ 'test' for the held-out split)."""
    d = make_splits(seed, num_train, num_valid, num_stories, split, num_heldout, fact_words)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"train": os.path.join(out_dir, TRAIN_FILE),
             "valid": os.path.join(out_dir, VALID_FILE),
             "passages": os.path.join(out_dir, STORIES_FILE),
             "split": os.path.join(out_dir, SPLIT_FILE)}
    write_jsonl(paths["train"], [dialogue_record(x) for x in d.train])
    write_jsonl(paths["valid"], [dialogue_record(x) for x in d.valid])
    write_jsonl(paths["passages"], [passage_record(p) for p in d.stories])
    test_path = os.path.join(out_dir, TEST_FILE)
    if d.test:
        paths["test"] = test_path
        write_jsonl(test_path, [dialogue_record(x) for x in d.test])
    elif os.path.exists(test_path):  # left by an earlier held-out dataset in this folder
        os.remove(test_path)
    with open(paths["split"], "w") as f:
        json.dump({"split": d.split, "seed": seed, "stories": d.split_stories}, f, indent=1)
    return paths


def main() -> None:
    """CLI: writes the dataset."""
    f = flags.FLAGS
    if os.path.exists(f.out) and not os.path.isdir(f.out):
        raise ConfigError(f"--out={f.out}: is a file; expected a folder (new or existing)")
    if f.split == "heldout" and f.num_stories < 2 * f.num_heldout + 1:
        raise ConfigError(f"--num_stories={f.num_stories}: the held-out split needs at least "
                          f"2 * --num_heldout + 1 = {2 * f.num_heldout + 1} stories")
    paths = generate(f.out, f.seed, f.num_train, f.num_valid, f.num_stories, f.split,
                     f.num_heldout, f.fact_words)
    test = f", {f.num_valid} test" if "test" in paths else ""
    print(f"wrote {f.num_train} train, {f.num_valid} valid{test} dialogues and "
          f"{f.num_stories} stories ({f.split} split) to {f.out}: " + ", ".join(paths.values()))
    print(f"retrieval baselines on it: python -m lapdog_jax.baselines --data={f.out}")


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "output folder", required=True)
    flags.DEFINE_integer("seed", 0, "generator seed")
    flags.DEFINE_integer("num_train", 2000, "train dialogues", lower_bound=1)
    flags.DEFINE_integer("num_valid", 200, "valid dialogues", lower_bound=1)
    flags.DEFINE_integer("num_stories", 200, "stories in the corpus", lower_bound=1)
    flags.DEFINE_enum("split", "shared", list(SPLITS),
                      "shared: valid dialogues reuse the training characters; heldout: valid "
                      "and test characters never appear in training")
    flags.DEFINE_integer("num_heldout", 8, "held-out split: characters kept for valid (and as "
                         "many for test)", lower_bound=1)
    flags.DEFINE_integer("fact_words", 2, "held-out split: words per fact (2: a pair no "
                         "training character has; 1: a word several training characters "
                         "share)", lower_bound=1, upper_bound=2)
    cli.run(main)
