import struct

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration

from fedwhisper.errors import FedwhisperError
from fedwhisper.models.convert import state_dict_from_checkpoint, whisper_config_from_checkpoint
from fedwhisper.models.ctranslate2_format import CheckpointFormatError, load_checkpoint


@pytest.mark.parametrize(("quantization", "tolerance"), [("float32", 0.0), ("float16", 1e-3), ("int8", 1e-2)])
def test_checkpoint_written_by_ctranslate2_maps_back_to_the_original_weights(tiny_whisper_dir, tiny_ct2, quantization, tolerance):
    original = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).state_dict()
    checkpoint = load_checkpoint([tiny_ct2(quantization) / "model.bin"])
    converted = state_dict_from_checkpoint(checkpoint)

    assert set(converted) == set(original) - {"proj_out.weight"}
    for name, value in converted.items():
        expected = original[name].numpy()
        assert value.shape == expected.shape, name
        error = np.max(np.abs(value.astype(np.float32) - expected)) / (np.max(np.abs(expected)) + 1e-12)
        assert error <= tolerance, f"{name}: relative error {error}"


def test_sizes_are_read_from_the_checkpoint(tiny_ct2):
    config = whisper_config_from_checkpoint(load_checkpoint([tiny_ct2("float32") / "model.bin"]), {})
    assert (config.encoder_layers, config.decoder_layers, config.d_model) == (2, 2, 64)
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (4, 4)
    assert (config.encoder_ffn_dim, config.vocab_size, config.max_source_positions) == (128, 51864, 1500)
    assert config.decoder_start_token_id == 50257 and config.eos_token_id == 50256  # English-only vocabulary


def test_converted_weights_give_the_same_logits(tiny_whisper_dir, tiny_ct2):
    original = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).eval()
    checkpoint = load_checkpoint([tiny_ct2("float32") / "model.bin"])
    converted = WhisperForConditionalGeneration(whisper_config_from_checkpoint(checkpoint, {})).eval()
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state_dict_from_checkpoint(checkpoint).items()}
    converted.load_state_dict(state, strict=False)
    converted.tie_weights()
    features = torch.randn(1, 80, 3000)
    tokens = torch.tensor([[50257, 50362, 440, 2068]])
    with torch.no_grad():
        torch.testing.assert_close(
            converted(features, decoder_input_ids=tokens).logits, original(features, decoder_input_ids=tokens).logits
        )


def test_split_checkpoint_parts_are_read_as_one(tiny_ct2, tmp_path):
    data = (tiny_ct2("float16") / "model.bin").read_bytes()
    (tmp_path / "part1").write_bytes(data[: len(data) // 3])
    (tmp_path / "part2").write_bytes(data[len(data) // 3 :])
    whole = load_checkpoint([tiny_ct2("float16") / "model.bin"])
    split = load_checkpoint([tmp_path / "part1", tmp_path / "part2"])
    assert split.variables.keys() == whole.variables.keys()
    assert all(np.array_equal(split.variables[k], whole.variables[k]) for k in whole.variables)


def test_truncated_checkpoint_is_a_clear_error(tiny_ct2, tmp_path):
    data = (tiny_ct2("float32") / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        load_checkpoint([tmp_path / "model.bin"])


def test_unknown_binary_version_is_rejected(tmp_path):
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 99) + b"\0" * 16)
    with pytest.raises(CheckpointFormatError, match="version 99"):
        load_checkpoint([tmp_path / "model.bin"])


def test_missing_part_names_the_file(tmp_path):
    with pytest.raises(FedwhisperError, match="part2"):
        load_checkpoint([tmp_path / "part1", tmp_path / "part2"])


def test_bfloat16_is_widened_to_float32(tmp_path):
    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    values = np.array([1.5, -2.0, 0.15625], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    blob = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, 1)
    blob += string("x/weight") + struct.pack("<BIBI", 1, 3, 5, len(bf16)) + bf16 + struct.pack("<I", 0)
    (tmp_path / "model.bin").write_bytes(blob)
    np.testing.assert_array_equal(load_checkpoint([tmp_path / "model.bin"]).get("x/weight"), values)
