import csv

from typer.testing import CliRunner

from fedwhisper.cli import app


def test_prepare_then_evaluate_from_the_command_line(tiny_asr_corpus, tiny_asr_model, tmp_path):
    features = tmp_path / "features"
    prepared = CliRunner().invoke(
        app,
        [
            "asr",
            "prepare",
            str(tiny_asr_corpus),
            "--out",
            str(features),
            "--model",
            str(tiny_asr_model),
            "--num-proc",
            "1",
            "--validation-speakers",
            "1",
        ],
    )
    assert prepared.exit_code == 0, prepared.output
    assert "validation" in prepared.output and (features / "prepare_report.json").is_file()
    evaluated = CliRunner().invoke(
        app,
        ["asr", "evaluate", str(features), "--model", str(tiny_asr_model), "--limit", "4", "--csv", str(tmp_path / "wer.csv")],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "WER" in evaluated.output and "CER" in evaluated.output
    rows = list(csv.DictReader(open(tmp_path / "wer.csv")))
    assert len(rows) == 4 and {"path", "speaker_id", "reference", "hypothesis", "wer"} <= set(rows[0])


def test_evaluate_reads_a_corpus_directly_and_names_a_missing_split(tiny_asr_corpus, tiny_asr_model, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "asr",
            "evaluate",
            str(tiny_asr_corpus),
            "--model",
            str(tiny_asr_model),
            "--limit",
            "2",
            "--csv",
            str(tmp_path / "wer.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    missing = CliRunner().invoke(app, ["asr", "evaluate", str(tiny_asr_corpus), "--model", str(tiny_asr_model), "--split", "dev"])
    assert missing.exit_code == 1 and "no dev split" in missing.output


def test_train_without_features_or_resume_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["asr", "train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "FEATURES" in result.output
    result = CliRunner().invoke(app, ["asr", "train", "--resume", str(tmp_path)])
    assert result.exit_code == 1 and "not a run directory" in result.output


def test_evaluation_encodes_each_batch_once_and_caps_its_tokens_by_its_longest_clip(tiny_asr_model, tiny_features, monkeypatch):
    import fedwhisper.asr.evaluate as evaluate
    from fedwhisper.asr.batches import AsrBatches
    from fedwhisper.asr.prepare import load_features
    from fedwhisper.models.registry import load_whisper
    from fedwhisper.transcribe import DecodingOptions, token_cap

    caps = []
    real_decode = evaluate.decode_batch
    monkeypatch.setattr(
        evaluate,
        "decode_batch",
        lambda model, tokenizer, inputs, options, assistant: (
            caps.append(options.max_new_tokens) or real_decode(model, tokenizer, inputs, options)
        ),
    )
    clips = load_features(tiny_features)[0]["train"].select(range(6))
    model, processor = load_whisper(tiny_asr_model)
    encoded = []
    model.get_encoder().register_forward_hook(lambda module, args, output: encoded.append(output.last_hidden_state.shape))
    evaluate.evaluate_batches(
        model, processor.tokenizer, AsrBatches(clips, model.config.decoder_start_token_id), DecodingOptions(batch_size=4)
    )
    assert [shape[0] for shape in encoded] == [4, 2]  # the teacher-forced loss and generation share one encoder pass
    seconds = clips["duration"]
    assert caps == [token_cap(max(seconds[:4]), 128), token_cap(max(seconds[4:]), 128)]
    assert all(cap < 128 for cap in caps)  # the tiny corpus's clips are a few seconds long
