"""The TFDS builder reads LAPDOG files from manual_dir and returns the same examples."""

import json

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from lapdog_jax import data  # noqa: E402
from lapdog_jax.data import tfds_builder  # noqa: E402

DIALOGUES = [
    {"question": "persona: i read twenty books a year. i only eat kosher. context:  Q: hello "
                 "what are doing today ?",
     "answers": ["i am good , i just got off work and tired , i have two jobs ."],
     "gold_passage_ids": ["s1"]},
    {"question": "persona: i have a dog . context:  Q: what is your dog called ?",
     "answers": ["my dog is called biscuit .", "biscuit ."]},
    {"question": "persona: é ü ñ . context:  Q: ça va ?", "answers": ["très bien ."],
     "gold_passage_ids": ["s2", "s1"]},
]
STORIES = [{"id": "s1", "title": "Beach", "text": "I enjoyed long walks on the beach."},
           {"id": "s2", "title": "", "text": "My dog biscuit waited at the door."}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Builds both configs from fixture files into a temporary data_dir."""
    manual = tmp_path_factory.mktemp("manual")
    for name, recs in (("train.jsonl", DIALOGUES), ("valid.jsonl", DIALOGUES[1:]),
                       ("story.jsonl", STORIES)):
        (manual / name).write_text("".join(json.dumps(r) + "\n" for r in recs), "utf-8")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    config = tfds.download.DownloadConfig(manual_dir=str(manual))
    out = {}
    for name in ("dialogues", "passages"):
        builder = tfds_builder.Lapdog(config=name, data_dir=data_dir)
        builder.download_and_prepare(download_config=config)
        out[name] = builder
    return manual, out


def _read(builder, split):
    """Examples of a split as python values, in file order."""
    rows = sorted(tfds.as_numpy(builder.as_dataset(split=split)), key=lambda r: r["index"])
    dec = lambda v: v.decode("utf-8")
    return [{k: (dec(v) if isinstance(v, bytes) else [dec(x) for x in v] if k != "index"
                 else int(v)) for k, v in r.items()} for r in rows]


def test_dialogues_round_trip(built):
    manual, builders = built
    b = builders["dialogues"]
    assert set(b.info.splits) == {"train", "validation"}
    for split, file in (("train", "train.jsonl"), ("validation", "valid.jsonl")):
        expected = [dict(data.dialogue_record(d), gold_passage_ids=list(d.gold_passage_ids),
                         index=i)
                    for i, d in enumerate(data.read_dialogues(str(manual / file)))]
        assert _read(b, split) == expected


def test_passages_round_trip(built):
    _, builders = built
    assert _read(builders["passages"], "train") == [dict(s, index=i)
                                                    for i, s in enumerate(STORIES)]


def test_bad_file_is_a_data_error(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answers": []}\n', "utf-8")
    builder = tfds_builder.Lapdog(config="dialogues", data_dir=str(tmp_path / "out"))
    with pytest.raises(data.DataError, match="train.jsonl:1: empty answers"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))
