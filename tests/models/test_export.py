import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedwhisper.audio import write_audio
from fedwhisper.cli import app
from fedwhisper.errors import FedwhisperError


@pytest.fixture(scope="module")
def tiny_export(tiny_asr_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "ct2"
    result = CliRunner().invoke(app, ["models", "export", str(tiny_asr_model), "--out", str(out), "--quantization", "float32"])
    assert result.exit_code == 0, result.output
    return out


def test_an_export_carries_what_faster_whisper_and_transformers_need_and_is_reused(tiny_asr_model, tiny_export):
    from fedwhisper.models.export import EXPORT_MARKER, export_ctranslate2
    from fedwhisper.models.registry import load_processor

    assert {"model.bin", "tokenizer.json", "preprocessor_config.json", EXPORT_MARKER} <= {p.name for p in tiny_export.iterdir()}
    assert json.loads((tiny_export / EXPORT_MARKER).read_text())["quantization"] == "float32"
    assert load_processor(tiny_export).tokenizer.convert_tokens_to_ids("<|startoftranscript|>") == 50257
    written = (tiny_export / "model.bin").stat().st_mtime_ns
    export_ctranslate2(str(tiny_asr_model), tiny_export, "float32")
    assert (tiny_export / "model.bin").stat().st_mtime_ns == written  # the finished export was reused
    export_ctranslate2(str(tiny_asr_model), tiny_export, "int8")  # another quantization: converted again
    assert json.loads((tiny_export / EXPORT_MARKER).read_text())["quantization"] == "int8"
    export_ctranslate2(str(tiny_asr_model), tiny_export, "float32")


def test_ctranslate2_decodes_the_features_as_transformers_does(tiny_asr_model, tiny_export, tiny_features):
    # the float32 export of the same weights gives the same greedy tokens: the backends differ in speed, not in output
    from fedwhisper.asr.evaluate import evaluate_data
    from fedwhisper.transcribe import DecodingOptions

    # a random model's logits are near-tied, so a few tokens only; the real model below decodes whole texts
    options = DecodingOptions(max_new_tokens=6, batch_size=4)
    on_torch = evaluate_data(tiny_features, str(tiny_asr_model), "test", options, limit=8, progress=False, window="full")
    on_ct2 = evaluate_data(tiny_features, str(tiny_export), "test", options, limit=8, progress=False, backend="ctranslate2")
    assert [r["hypothesis"] for r in on_ct2["rows"]] == [r["hypothesis"] for r in on_torch["rows"]]
    assert on_ct2["wer"] == on_torch["wer"] and on_ct2["loss"] is None


@pytest.mark.weights
def test_ctranslate2_decodes_whole_texts_as_transformers_does_on_both_windows(session_home, tiny_features, tmp_path):
    """tiny.en and its float32 export, every test clip of the tiny corpus, whole greedy texts, on 30-s windows and on
    clip windows (CTranslate2 encodes a clip window as transformers does: positions sliced)."""
    from fedwhisper.asr.evaluate import evaluate_data
    from fedwhisper.models.export import export_ctranslate2
    from fedwhisper.models.registry import import_packaged_model
    from fedwhisper.transcribe import DecodingOptions

    model = str(import_packaged_model("tiny.en"))
    export = export_ctranslate2(model, tmp_path / "ct2", "float32")
    options = DecodingOptions(batch_size=4)
    for window in ("full", "clip"):
        on_torch = evaluate_data(tiny_features, model, "test", options, limit=8, progress=False, window=window)
        on_ct2 = evaluate_data(
            tiny_features, str(export), "test", options, limit=8, progress=False, window=window, backend="ctranslate2"
        )
        pairs = [(a["hypothesis"], b["hypothesis"]) for a, b in zip(on_ct2["rows"], on_torch["rows"])]
        assert len(pairs) >= 8 and sum(len(a.split()) for a, _ in pairs) >= 40
        if window == "full":
            assert all(a == b for a, b in pairs), pairs
        else:  # pretrained tiny.en loops on clip windows until capped, and the engines cap a loop at different lengths:
            # every text equal, or the shorter a prefix of the longer (a word cut at the cap aside)
            assert sum(a == b for a, b in pairs) >= len(pairs) - 2, pairs
            for a, b in pairs:
                short, long = sorted((a.split(), b.split()), key=len)
                assert short[:-1] == long[: len(short) - 1], (a, b)


def test_transcribe_through_the_ctranslate2_backend_writes_the_usual_outputs(tiny_export, tmp_path):
    write_audio(tmp_path / "a.wav", np.random.default_rng(0).normal(0, 0.1, 16_000 * 3).astype(np.float32))
    for batch_size in ("1", "4"):  # faster-whisper's sequential decoding, and its batched pipeline
        result = CliRunner().invoke(
            app,
            [
                "transcribe",
                str(tmp_path / "a.wav"),
                "--model",
                str(tiny_export),
                "--backend",
                "ctranslate2",
                "--batch-size",
                batch_size,
                "-f",
                "json",
                "-f",
                "srt",
                "--out-dir",
                str(tmp_path / batch_size),
            ],
        )
        assert result.exit_code == 0, result.output
        transcript = json.loads((tmp_path / batch_size / "a.json").read_text())
        assert transcript["duration"] == 3.0 and transcript["language"] == "en"
        assert all(0 <= s["start"] <= s["end"] <= 30 for s in transcript["segments"])
        assert (tmp_path / batch_size / "a.srt").is_file()


def test_exporting_and_choosing_backends_refuse_bad_input(tiny_asr_model, tiny_export, tmp_path):
    from fedwhisper.asr.evaluate import evaluate_data
    from fedwhisper.models.export import export_ctranslate2
    from fedwhisper.models.registry import load_whisper

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FedwhisperError, match="is not a fedwhisper export"):
        export_ctranslate2(str(tiny_asr_model), tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(FedwhisperError, match="--quantization must be one of"):
        export_ctranslate2(str(tiny_asr_model), tmp_path / "out", "int4")
    with pytest.raises(FedwhisperError, match="already a CTranslate2 model"):
        export_ctranslate2(str(tiny_export), tmp_path / "out")
    with pytest.raises(FedwhisperError, match="is a CTranslate2 model: it runs with --backend ctranslate2"):
        load_whisper(str(tiny_export))
    with pytest.raises(FedwhisperError, match="--backend must be one of"):
        evaluate_data(tmp_path, str(tiny_asr_model), backend="onnx")
    with pytest.raises(FedwhisperError, match="--window must be one of"):
        evaluate_data(tmp_path, str(tiny_export), window="30s", backend="ctranslate2")
