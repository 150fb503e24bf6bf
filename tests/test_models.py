"""Variants, the factory, tokenizers and special ids per model family."""

from __future__ import annotations

import pytest
import torch

from kidwhisper.config import load_config
from kidwhisper.data.text import encode_labels, family_tokenizer, special_tokens
from kidwhisper.models.factory import ModelFactory, WhisperModel
from kidwhisper.models.variants import VARIANTS, get_variant

# Parameter counts of the published checkpoints (transformers' count, tied output layer).
PUBLISHED_PARAMS = {"tiny": 37_760_640, "base": 72_593_920, "small": 241_734_912}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_random_init_has_the_real_architecture(name: str):
    wm = WhisperModel(name, pretrained="random").load()
    assert wm.params == PUBLISHED_PARAMS[name]
    assert wm.model.config.num_mel_bins == 80


def test_variant_table_covers_the_family():
    expected = {"tiny", "base", "small", "medium", "large", "large-v2", "large-v3"}
    expected |= {"large-v3-turbo", "tiny.en", "base.en", "small.en", "medium.en"}
    assert set(VARIANTS) == expected
    assert get_variant("large-v3").n_mels == 128
    assert get_variant("large-v3-turbo").decoder_layers == 4
    assert get_variant("medium").d_model == 1024
    with pytest.raises(ValueError, match="unknown Whisper variant 'huge'"):
        get_variant("huge")


def test_variant_flows_from_config_to_load():
    config = load_config(None, ["model.variant=base.en", "model.pretrained=random"])
    wm = ModelFactory(config).create()
    assert wm.variant.name == "base.en"
    assert (wm.model.config.d_model, wm.model.config.vocab_size) == (512, 51864)


# Expected ids per family, as documented by OpenAI's tokenizer (the tests check that the
# ids derived from each tokenizer's strings are these, not the other way round).
FAMILIES = {
    "tiny.en": dict(sot=50257, eot=50256, no_timestamps=50362, language=None, task=None),
    "base": dict(sot=50258, eot=50257, no_timestamps=50363, language=50259, task=50359),
    "large-v3": dict(sot=50258, eot=50257, no_timestamps=50364, language=50259, task=50360),
}


@pytest.mark.parametrize("variant", sorted(FAMILIES))
def test_special_ids_are_derived_per_family(variant: str):
    v = get_variant(variant)
    tokenizer = family_tokenizer(v.tokenizer_family, v.vocab_size)
    assert len(tokenizer) == v.vocab_size
    ids = special_tokens(tokenizer, not v.english_only, v.vocab_size)
    for field, value in FAMILIES[variant].items():
        assert getattr(ids, field) == value, field
    assert ids.prefix == [
        x for x in (ids.sot, ids.language, ids.task, ids.no_timestamps) if x is not None
    ]


def test_v3_tokenizer_has_cantonese():
    v = get_variant("large-v3")
    tokenizer = family_tokenizer(v.tokenizer_family, v.vocab_size)
    assert tokenizer.convert_tokens_to_ids("<|yue|>") == 50358
    assert tokenizer.convert_tokens_to_ids("<|translate|>") == 50359


def test_bundled_tiny_en_ids(tiny_en):
    assert tiny_en.special.prefix == [50257, 50362]
    assert tiny_en.model.config.decoder_start_token_id == tiny_en.special.sot


def test_labels_round_trip_text(tiny_en):
    labels = encode_labels(tiny_en.tokenizer, tiny_en.special, "the mouses goed home")
    assert labels[:2] == tiny_en.special.prefix
    assert labels[-1] == tiny_en.special.eot
    assert tiny_en.tokenizer.decode(labels, skip_special_tokens=True) == " the mouses goed home"


def test_variant_mismatch_is_an_error(tmp_path):
    wm = WhisperModel("tiny", pretrained="random").load()
    wm.save(tmp_path / "tiny")
    with pytest.raises(ValueError, match=r"model\.variant is 'base'"):
        WhisperModel("base", pretrained=str(tmp_path / "tiny")).load()


def test_saved_model_reloads_identically(tmp_path, random_tiny):
    random_tiny.save(tmp_path / "m")
    again = WhisperModel("tiny", pretrained=str(tmp_path / "m")).load()
    ours, theirs = random_tiny.model.state_dict(), again.model.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_missing_local_folder_is_named():
    with pytest.raises(FileNotFoundError, match=r"\./no/such/model"):
        WhisperModel("tiny", pretrained="./no/such/model").load()


def _forward(model, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    return model(input_features=features, decoder_input_ids=torch.tensor([[50258, 50259]])).logits


def test_dropout_flows_from_config_and_only_trains(tmp_path):
    config = load_config(
        None, ["model.variant=tiny", "model.pretrained=random", "training.dropout=0.2"]
    )
    model = ModelFactory(config).create().model
    layers = [*model.model.encoder.layers, *model.model.decoder.layers]
    assert {layer.dropout for layer in layers} == {0.2}
    model.train()
    assert not torch.allclose(_forward(model, 1), _forward(model, 2))  # masks drawn
    model.eval()
    with torch.no_grad():
        assert torch.equal(_forward(model, 1), _forward(model, 2))  # none at evaluation
    # A saved model remembers 0.2 in its config.json; the loading config still decides.
    ModelFactory(config).create().save(tmp_path / "m")
    again = WhisperModel("tiny", pretrained=str(tmp_path / "m")).load().model
    assert {layer.dropout for layer in again.model.decoder.layers} == {0.0}
    again.train()
    with torch.no_grad():
        assert torch.equal(_forward(again, 1), _forward(again, 2))


def test_dropout_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"training\.dropout"):
        load_config(None, ["training.dropout=0.9"])
