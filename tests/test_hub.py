"""Hub ids for init.reader / init.retriever / init.reference / data.tokenizer, resolved from a
fake Hugging Face cache laid out on disk (HF_HUB_CACHE layout), offline: no network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from lapdog_jax import config_lib, experiment, hub, paths
from lapdog_jax import data as data_lib
from lapdog_jax.data import tokenizer as tok_lib
from lapdog_jax.models import hf

REV = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["dialog with R's persona: i like cats. R: <extra_id_0>", "<extra_id_0> me too",
         "story title: cats story: a cat sat on the mat"] * 20


def _snapshot(cache, repo_id: str):
    """An empty snapshot folder of `repo_id` in `cache`, with refs/main pointing at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REV)
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    return snap


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A cache holding `tiny-org/tiny-t5` (random T5 + SentencePiece tokenizer, written by
    save_pretrained) and `tiny-org/tiny-bert` (random BERT + WordPiece tokenizer)."""
    root = tmp_path_factory.mktemp("hub")
    cache = root / "cache"
    t5_dir = _snapshot(cache, "tiny-org/tiny-t5")
    tok = tok_lib.train_sentencepiece(TEXTS, str(root / "spm"), vocab_size=60)
    tok.save_pretrained(t5_dir)
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=len(tok), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
        num_heads=2, decoder_start_token_id=tok.pad_token_id))
    t5.save_pretrained(t5_dir)
    bert_dir = _snapshot(cache, "tiny-org/tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "cats", "mat", "i", "like"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(str(root / "vocab.txt")).save_pretrained(bert_dir)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32), add_pooling_layer=False).save_pretrained(bert_dir)
    return cache, t5_dir, bert_dir


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE = the fake cache, for this test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache[0]))
    return hub_cache


def _config(**init):
    """The preset-free grpo config with the given init.* / data.* paths."""
    config = config_lib.mode_config("grpo")
    for key, value in init.items():
        section, leaf = key.split("__")
        config[section][leaf] = value
    return config


def test_hub_ids_resolve_to_the_cached_snapshot(offline_cache, tmp_path):
    """init.reader, init.retriever, init.reference and data.tokenizer: the snapshot folder."""
    cache, t5_dir, bert_dir = offline_cache
    config = _config(init__reader="tiny-org/tiny-t5", init__retriever="tiny-org/tiny-bert",
                     init__reference="tiny-org/tiny-t5", data__tokenizer="tiny-org/tiny-t5")
    for flag in ("init.reader", "init.reference", "data.tokenizer"):
        assert paths.resolve(config, flag) == str(t5_dir), flag
    assert paths.resolve(config, "init.retriever") == str(bert_dir)

    reader_tok, retriever_tok = experiment.load_tokenizers(config, str(tmp_path), [], [],
                                                           data_lib.FORMATS["dialogue"])
    assert reader_tok.encode("i like cats") and retriever_tok.convert_tokens_to_ids("cat") == 5
    reader, params = experiment.build_reader(config, reader_tok, None)
    _, want = hf.load_t5(str(t5_dir))
    np.testing.assert_array_equal(params["shared"]["embedding"], want["shared"]["embedding"])
    assert reader.config.d_model == 16 and reader.config.scan_layers  # the default
    retriever, _ = experiment.build_retriever(config, retriever_tok, None)
    assert retriever.config.hidden_size == 16 and retriever.config.scan_layers
    # The run's model.* choices reach the loaded models (they are not checkpoint fields).
    config.model.scan_layers, config.model.remat, config.model.attention = False, "full", "fused"
    reader, _ = experiment.build_reader(config, reader_tok, None)
    assert (reader.config.scan_layers, reader.config.remat, reader.config.attention) == (
        False, "full", "fused")
    assert not experiment.build_retriever(config, retriever_tok, None)[0].config.scan_layers
    config.model.param_dtype = "bfloat16"  # stored in bf16, loaded values rounded
    _, params = experiment.build_reader(config, reader_tok, None)
    _, r_params = experiment.build_retriever(config, retriever_tok, None)
    assert {x.dtype for x in jax.tree.leaves((params, r_params))} == {jnp.dtype(jnp.bfloat16)}
    np.testing.assert_array_equal(params["shared"]["embedding"],
                                  jnp.asarray(want["shared"]["embedding"], jnp.bfloat16))


def test_folders_and_packaged_names_still_work(offline_cache):
    """A folder wins over the hub; 'packaged:' names are untouched."""
    _, t5_dir, _ = offline_cache
    config = _config(init__reader=str(t5_dir), init__retriever=config_lib.PACKAGED_RETRIEVER)
    assert paths.resolve(config, "init.reader") == str(t5_dir)
    assert paths.resolve(config, "init.retriever") == paths.packaged_path(
        config_lib.PACKAGED_RETRIEVER)


def test_missing_hub_id_is_one_clear_line(offline_cache):
    """Neither a folder nor in the cache (offline): a ConfigError naming the flag, one line."""
    cache, _, _ = offline_cache
    config = _config(init__retriever="facebook/contriever-not-cached")
    with pytest.raises(config_lib.ConfigError) as e:
        paths.resolve(config, "init.retriever")
    message = str(e.value)
    assert message.startswith("--config.init.retriever=facebook/contriever-not-cached: no such "
                              "folder, and no Hugging Face hub snapshot in the cache")
    assert str(cache) in message and "HF_HUB_OFFLINE" in message and "\n" not in message


def test_data_paths_are_not_hub_ids(offline_cache):
    """A missing data file is still 'no such file', never a hub lookup."""
    config = _config(data__train="data/convai2/train.jsonl")
    with pytest.raises(config_lib.ConfigError, match="no such file or directory"):
        paths.resolve(config, "data.train")
    assert hub.is_hub_id("google/flan-t5-base") and hub.is_hub_id("t5-base")
    assert not hub.is_hub_id("ckpt/stage1/checkpoint/step-12000")
    assert not hub.is_hub_id("/models/contriever") and not hub.is_hub_id("./ckpt")

