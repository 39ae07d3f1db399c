"""Convert a CTranslate2 Whisper checkpoint into a Hugging Face transformers model directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from fedwhisper.constants import is_multilingual
from fedwhisper.models.ctranslate2_format import Checkpoint, CheckpointFormatError

# openai/whisper's criterion: English-only vocabularies have 51864 entries.
N_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|> in 20 ms steps
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


def _layer_count(checkpoint: Checkpoint, stack: str) -> int:
    indices = {int(m.group(2)) for name in checkpoint.variables if (m := _LAYER.match(name)) and m.group(1) == stack}
    if not indices or sorted(indices) != list(range(len(indices))):
        raise CheckpointFormatError(f"{stack} layers are missing or not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def _linear(state: dict, checkpoint: Checkpoint, source: str, target: str, bias: bool = True) -> None:
    state[f"{target}.weight"] = checkpoint.get(f"{source}/weight")
    if bias:
        state[f"{target}.bias"] = checkpoint.get(f"{source}/bias")


def _norm(state: dict, checkpoint: Checkpoint, source: str, target: str) -> None:
    state[f"{target}.weight"] = checkpoint.get(f"{source}/gamma")
    state[f"{target}.bias"] = checkpoint.get(f"{source}/beta")


def _fused(checkpoint: Checkpoint, source: str, parts: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split a fused projection (rows concatenated) into ``parts`` weights and biases."""
    weight = checkpoint.get(f"{source}/weight")
    bias = checkpoint.get(f"{source}/bias")
    if weight.shape[0] % parts or bias.shape[0] != weight.shape[0]:
        raise CheckpointFormatError(f"{source}: cannot split {weight.shape} into {parts} projections")
    return np.split(weight, parts), np.split(bias, parts)


def _self_attention(state: dict, checkpoint: Checkpoint, source: str, target: str) -> None:
    (wq, wk, wv), (bq, _bk_zero, bv) = _fused(checkpoint, f"{source}/linear_0", 3)
    state[f"{target}.q_proj.weight"], state[f"{target}.q_proj.bias"] = wq, bq
    state[f"{target}.k_proj.weight"] = wk  # Whisper's key projection has no bias
    state[f"{target}.v_proj.weight"], state[f"{target}.v_proj.bias"] = wv, bv
    _linear(state, checkpoint, f"{source}/linear_1", f"{target}.out_proj")


def _cross_attention(state: dict, checkpoint: Checkpoint, source: str, target: str) -> None:
    _linear(state, checkpoint, f"{source}/linear_0", f"{target}.q_proj")
    (wk, wv), (_bk_zero, bv) = _fused(checkpoint, f"{source}/linear_1", 2)
    state[f"{target}.k_proj.weight"] = wk
    state[f"{target}.v_proj.weight"], state[f"{target}.v_proj.bias"] = wv, bv
    _linear(state, checkpoint, f"{source}/linear_2", f"{target}.out_proj")


def _ffn(state: dict, checkpoint: Checkpoint, source: str, target: str) -> None:
    _linear(state, checkpoint, f"{source}/linear_0", f"{target}.fc1")
    _linear(state, checkpoint, f"{source}/linear_1", f"{target}.fc2")
    _norm(state, checkpoint, f"{source}/layer_norm", f"{target}.final_layer_norm")


def state_dict_from_checkpoint(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """Map CTranslate2 WhisperSpec variables to transformers' WhisperForConditionalGeneration names."""
    if checkpoint.spec != "WhisperSpec":
        raise CheckpointFormatError(f"expected a WhisperSpec checkpoint, got {checkpoint.spec!r}")
    state: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(state, checkpoint, f"encoder/{conv}", f"model.encoder.{conv}")
    state["model.encoder.embed_positions.weight"] = checkpoint.get("encoder/position_encodings/encodings")
    _norm(state, checkpoint, "encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(_layer_count(checkpoint, "encoder")):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _self_attention(state, checkpoint, f"{src}/self_attention", f"{dst}.self_attn")
        _norm(state, checkpoint, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _ffn(state, checkpoint, f"{src}/ffn", dst)

    state["model.decoder.embed_tokens.weight"] = checkpoint.get("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = checkpoint.get("decoder/position_encodings/encodings")
    _norm(state, checkpoint, "decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(_layer_count(checkpoint, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _self_attention(state, checkpoint, f"{src}/self_attention", f"{dst}.self_attn")
        _norm(state, checkpoint, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _cross_attention(state, checkpoint, f"{src}/attention", f"{dst}.encoder_attn")
        _norm(state, checkpoint, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        _ffn(state, checkpoint, f"{src}/ffn", dst)
    return state


def whisper_config_from_checkpoint(checkpoint: Checkpoint, package_config: dict):
    """A WhisperConfig whose sizes are read from the checkpoint's shapes and scalars."""
    from transformers import WhisperConfig

    vocab_size, d_model = checkpoint.get("decoder/embeddings/weight").shape
    multilingual = is_multilingual(vocab_size)
    eot = 50257 if multilingual else 50256
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=checkpoint.get("encoder/conv1/weight").shape[1],
        d_model=d_model,
        encoder_layers=_layer_count(checkpoint, "encoder"),
        decoder_layers=_layer_count(checkpoint, "decoder"),
        encoder_attention_heads=int(checkpoint.scalar("encoder/num_heads")),
        decoder_attention_heads=int(checkpoint.scalar("decoder/num_heads")),
        encoder_ffn_dim=checkpoint.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=checkpoint.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=checkpoint.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=checkpoint.get("decoder/position_encodings/encodings").shape[0],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=eot + 1,
        tie_word_embeddings=True,
    )


def whisper_tokenizer(tokenizer_json: Path, vocab_size: int):
    """Whisper tokenizer from a ``tokenizer.json``, completed with timestamp tokens up to ``vocab_size``.

    Some packaged tokenizers stop at <|notimestamps|>; the model's vocabulary continues with the
    1501 timestamp tokens, which decoding with timestamps needs by name.
    """
    from transformers import AddedToken, WhisperTokenizer

    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_json))
    missing = vocab_size - len(tokenizer)
    if missing == N_TIMESTAMPS:
        tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False) for i in range(N_TIMESTAMPS)])
    elif missing != 0:
        raise CheckpointFormatError(f"{tokenizer_json}: {len(tokenizer)} tokens do not fit a vocabulary of {vocab_size}")
    return tokenizer


def generation_config_for(config, tokenizer, package_config: dict):
    """Per-model generation settings: start/eos/no-timestamps tokens, languages, tasks, alignment heads."""
    from transformers import GenerationConfig

    token_id = tokenizer.convert_tokens_to_ids
    multilingual = is_multilingual(config.vocab_size)
    generation = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=list(package_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(package_config.get("suppress_ids_begin", [220, config.eos_token_id])),
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
        alignment_heads=[list(pair) for pair in package_config.get("alignment_heads", [])],
    )
    if multilingual:
        lang_ids = package_config.get("lang_ids") or [
            i for token, i in tokenizer.get_added_vocab().items() if re.fullmatch(r"<\|[a-z]{2,3}\|>", token)
        ]
        generation.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
        generation.task_to_id = {"transcribe": token_id("<|transcribe|>"), "translate": token_id("<|translate|>")}
    return generation


def convert_checkpoint(checkpoint: Checkpoint, tokenizer_json: Path, package_config: dict, out: Path) -> Path:
    """Write a transformers Whisper directory (weights, config, tokenizer, processor, generation config)."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    config = whisper_config_from_checkpoint(checkpoint, package_config)
    state = {
        name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        for name, value in state_dict_from_checkpoint(checkpoint).items()
    }
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    expected.discard("proj_out.weight")  # tied to the token embeddings
    if expected != set(state):
        raise CheckpointFormatError(
            f"converted names do not match transformers: missing {sorted(expected - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - expected)[:5]}"
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    tokenizer = whisper_tokenizer(tokenizer_json, config.vocab_size)
    model.generation_config = generation_config_for(config, tokenizer, package_config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    WhisperProcessor(feature_extractor, tokenizer).save_pretrained(out)
    feature_extractor.save_pretrained(out)  # preprocessor_config.json, which older tools look for
    return out


def read_package_config(path: Path) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}
