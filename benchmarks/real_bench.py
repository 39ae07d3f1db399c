"""Real speech: speechocean762's read English of Mandarin-L1 children and adults (OpenSLR 101, CC BY 4.0).

Only the corpus's ``train/`` data directory is read (125 speakers); its ``test/`` split is reserved for independent
evaluation and never touched here. Held-out test and validation speakers are carved from ``train/`` with children and
adults in every part (``asr prepare --test-speakers``); the rest are the clients' speakers.

- ``pretrained``: tiny.en and base as they ship, on the held-out speakers: WER overall, children, adults, on 30-s and
  clip windows, on the transformers and the CTranslate2 (faster-whisper, int8) backends, with decoding speed.
- ``federated``: `asr federate`'s defaults (tiny.en, LoRA on clip windows, 20 clients of the remaining speakers, 5 a
  round, 10 rounds) beside centralized and local-only training on the same client steps (fl-asr's harness); the best
  model exported to CTranslate2 int8 and scored on 30-s windows; forgetting measured on three out-of-domain sets: flite
  voices, LJSpeech (native read speech; --ljspeech, e.g. coqui-ai/TTS's tests/data/ljspeech/wavs) and spoken digits
  (short commands; --digits, Jakobovski/free-spoken-digit-dataset's recordings/).
- ``interpolation``: the served share of the federated update (WiSE-FT) against forgetting, on the finished run.
- ``serving``: the federated export's speed and WER beside the transformers path and faster-whisper on the pretrained
  model, one run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from fedwhisper.asr.evaluate import evaluate_data
from fedwhisper.asr.federated import AsrFederationOptions
from fedwhisper.asr.prepare import PrepareOptions, load_features, prepare_features
from fedwhisper.data.corpus import speaker_values
from fedwhisper.errors import FedwhisperError
from fedwhisper.transcribe import DecodingOptions

DATA: Path | None = None  # the corpus root (holding train/), from run.py's --data
LJSPEECH: Path | None = None  # LJSpeech clips (LJ001-00NN.wav), from run.py's --ljspeech
DIGITS: Path | None = None  # free-spoken-digit-dataset's recordings/ ({digit}_{speaker}_{n}.wav), from run.py's --digits
# LJSpeech's texts (public domain) of the clips in coqui-ai/TTS's tests/data/ljspeech/wavs that have one published
LJSPEECH_TEXTS = {
    "LJ001-0001": "Printing, in the only sense with which we are at present concerned, differs from most if not from all "
    "the arts and crafts represented in the Exhibition",
    "LJ001-0002": "in being comparatively modern.",
    "LJ001-0003": "For although the Chinese took impressions from wood blocks engraved in relief for centuries before the "
    "woodcutters of the Netherlands, by a similar process",
    "LJ001-0004": "produced the block books, which were the immediate predecessors of the true printed book,",
    "LJ001-0005": "the invention of movable metal letters in the middle of the fifteenth century may justly be considered as "
    "the invention of the art of printing.",
    "LJ001-0006": "And it is worth mention in passing that, as an example of fine typography,",
    "LJ001-0007": 'the earliest book printed with movable types, the Gutenberg, or "forty-two line Bible" of about fourteen '
    "fifty-five,",
    "LJ001-0008": "has never been surpassed.",
    "LJ001-0010": "Now, as all books not primarily intended as picture-books consist principally of types composed to form "
    "letterpress",
    "LJ001-0013": "than in the same operations with ugly ones",
    "LJ001-0019": "and which developed more completely and satisfactorily on the side of the lower-case than the capital "
    "letters,",
    "LJ001-0020": "the lower-case being in fact invented in the early Middle Ages",
    "LJ001-0021": "The earliest book printed with movable type, the aforesaid Gutenberg Bible, is printed in letters which are "
    "an exact imitation",
    "LJ001-0024": "But the first Bible actually dated",
    "LJ001-0025": "imitates a much freer hand, simpler, rounder, and less spiky, and therefore far pleasanter and easier to read",
    "LJ001-0027": "especially as regards the lower-case letters, and type very similar was used during the next fifteen or "
    "twenty years not only by Schoeffer,",
    "LJ001-0031": "In fourteen sixty five Sweynheim and Pannartz began printing in the monastery of Subiaco near Rome,",
    "LJ001-0032": "and used an exceedingly beautiful type, which is indeed to look at a transition between Gothic and Roman",
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_SPEAKERS, VALIDATION_SPEAKERS = 25, 12  # of train/'s 125: 500 and 240 utterances; 88 speakers left for clients
MODELS = ("tiny.en", "base")
# the personal and unlabelled parts compare runs of one budget each; their federations stop at round 3 (of the default
# 10) for the suite's time: the recipe's validation WER was 14.0 % there, its best 11.9 % at round 9 (the same run)
SHORTER = {"rounds": 3}


def train_dir() -> Path:
    """speechocean762's train/ data directory under --data (the corpus root, or train/ itself)."""
    if DATA is None:
        raise FedwhisperError("the real suite reads a corpus you give: benchmarks/run.py real --data DIR (speechocean762)")
    train = DATA if DATA.name == "train" else DATA / "train"
    if (train / "wav.scp").is_file():
        return train
    raise FedwhisperError(f"{DATA}: no train/ Kaldi data directory (wav.scp) in it; give speechocean762's root")


def features(work: Path, model: str) -> Path:
    """``train/`` prepared for ``model``'s tokenizer, with the held-out speakers carved (the same for every model)."""
    out = work / f"features-{model}"
    options = PrepareOptions(num_proc=2, validation_speakers=VALIDATION_SPEAKERS, test_speakers=TEST_SPEAKERS)
    prepare_features(train_dir(), model, out, options)
    return out


def _scored(result: dict) -> dict:
    groups = result["groups"].get("age_group", {})
    return {
        "wer": round(result["wer"], 4),
        "children": groups.get("child"),
        "adults": groups.get("adult"),
        "clips": result["clips"],
        "audio_seconds_per_second": round(result["audio_seconds"] / result["seconds"], 2),
        "examples": [{k: row[k] for k in ("reference", "hypothesis", "age_group")} for row in result["rows"][:3]],
    }


def pretrained(work: Path, small: bool) -> dict:
    limit = 40 if small else 0
    results: dict = {
        "options": {
            "data": "speechocean762 train/",
            "test_speakers": TEST_SPEAKERS,
            "validation_speakers": VALIDATION_SPEAKERS,
            "seed": 0,
            "batch_size": 16,
            "limit": limit,
            "quantization": "int8",
        }
    }
    # every preparation first: datasets' worker processes are forked, and a fork after torch or CTranslate2 has started
    # its thread pools can hang (it did: the second preparation, after the first model's evaluations)
    prepared_for = {model: features(work, model) for model in MODELS}
    for model, prepared in prepared_for.items():
        split = load_features(prepared)[0]
        results["speakers"] = {
            name: dict(sorted(Counter(speaker_values(split[name], "age_group").values()).items())) for name in split
        }
        for backend in ("transformers", "ctranslate2"):
            for window in ("full", "clip"):
                result = evaluate_data(
                    prepared, model, "test", DecodingOptions(batch_size=16), limit, window=window, backend=backend
                )
                results.setdefault(model, {}).setdefault(backend, {})[window] = _scored(result)
    return results


def _audiofolder(out: Path, rows: list[tuple[Path, str, str]]) -> Path:
    """A test-only audiofolder over files elsewhere: rows of (audio file, text, speaker)."""
    import csv

    (out / "test").mkdir(parents=True, exist_ok=True)
    with open(out / "test" / "metadata.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file_name", "transcription", "speaker_id"])
        writer.writerows([str(path), text, speaker] for path, text, speaker in rows)
    return out


def out_of_domain(work: Path, small: bool, model: str = "tiny.en") -> dict:
    """The forgetting sets, prepared for ``model``: flite voices, LJSpeech clips, spoken digits (5 of each digit by each
    of the 6 speakers: 300 one-word commands)."""
    from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder

    if LJSPEECH is None or DIGITS is None:
        raise FedwhisperError("the real suite's federated parts measure forgetting on --ljspeech DIR and --digits DIR")
    flite = work / "ood-flite"
    synthesize_audiofolder(
        flite, AsrSynthesisOptions(sentences=60 if small else 200, speakers=6, test_speakers=5, engines=("flite",), seed=7)
    )
    ljspeech = _audiofolder(
        work / "ood-ljspeech", [(LJSPEECH / f"{name}.wav", text, "lj") for name, text in LJSPEECH_TEXTS.items()]
    )
    per_digit = 1 if small else 5
    digits = _audiofolder(
        work / "ood-digits",
        [
            (DIGITS / f"{digit}_{speaker}_{n}.wav", word, speaker)
            for digit, word in enumerate(DIGIT_WORDS)
            for speaker in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
            for n in range(per_digit)
        ],
    )
    sets = {}
    for name, corpus in (("flite", flite), ("ljspeech", ljspeech), ("digits", digits)):
        out = work / f"features-{name}" if model == "tiny.en" else work / f"features-{name}-{model}"
        prepare_features(corpus, model, out, PrepareOptions(num_proc=2, validation_speakers=0))
        sets[name] = load_features(out)[0]["test"]
    return sets


def _options(work: Path, small: bool, model: str, prepared: Path, **changes) -> AsrFederationOptions:
    """`asr federate`'s defaults (a few short rounds at the small scale)."""
    scale = {"num_clients": 6, "clients_per_round": 3, "rounds": 2, "local_steps": 2, "eval_clips": 20} if small else {}
    return AsrFederationOptions(features=str(prepared), model=model, cache_dir=str(work / "cache"), **(scale | changes))


def _federation(work: Path, small: bool, model: str) -> dict:
    """The recipe beside centralized and local-only training; the best model on 30-s windows, on both backends."""
    import fl_asr_bench
    from fedwhisper.models.export import ctranslate2_model_dir

    started = time.perf_counter()
    prepared = features(work, model)
    held_out = {"held_out_speakers": load_features(prepared)[0]["test"]} | out_of_domain(work, small, model)
    options = _options(work, small, model, prepared)
    results = fl_asr_bench.federated_with_baselines(work, small, options, "en", held_out, time.perf_counter() - started)
    # what a device serves: the best federated model exported to CTranslate2 int8, every held-out clip on 30-s windows
    best = str(work / "federated" / "best")
    limit = 40 if small else 0
    decoding = DecodingOptions(batch_size=16)
    results["federated"]["ctranslate2_full"] = _scored(
        evaluate_data(prepared, str(ctranslate2_model_dir(best)), "test", decoding, limit, window="full", backend="ctranslate2")
    )
    results["federated"]["transformers_full"] = _scored(evaluate_data(prepared, best, "test", decoding, limit, window="full"))
    results["federated"]["transformers_clip"] = _scored(evaluate_data(prepared, best, "test", decoding, limit, window="clip"))
    # forgetting: every clip of each out-of-domain set on 30-s windows, the same clips the pretrained model was scored on
    results["forgetting"] = {
        name: {
            "pretrained": results["pretrained"][name]["full"]["wer"],
            "federated": fl_asr_bench._wer(best, split, "en", "full")["wer"],
            "clips": len(split),
        }
        for name, split in held_out.items()
        if name != "held_out_speakers"
    }
    return results


def federated(work: Path, small: bool) -> dict:
    return _federation(work, small, "tiny.en")


def federated_base(work: Path, small: bool) -> dict:
    return _federation(work, small, "base")


def _simulated(options: AsrFederationOptions, run_dir: Path):
    """The federation in ``run_dir``, continued where an interrupted one stopped."""
    from fedwhisper.fl.asr_app import simulate

    if (run_dir / "test.json").is_file():
        from fedwhisper.runs import RunDirectory

        return RunDirectory(run_dir)
    return simulate(options, run_dir, resume=(run_dir / "metrics.json").is_file())


def _best_state(run) -> dict:
    from fedwhisper.runs import load_arrays

    best = json.loads((run.path / "test.json").read_text())["round"]
    return load_arrays(run.path / f"trainable-round-{best:03d}.safetensors")[0]


def personal(work: Path, small: bool) -> dict:
    """The recipe with a quarter of each client speaker's clips kept on the devices; then every device fine-tunes the
    global adapters on its own training clips and both models are scored on its own kept clips (clip windows)."""
    from fedwhisper.asr.personal import PersonalOptions, personal_model

    prepared = features(work, "tiny.en")
    options = _options(work, small, "tiny.en", prepared, own_test_share=0.25, **({} if small else SHORTER))
    personal_options = PersonalOptions(steps=4 if small else 20)
    run = _simulated(options, work / "federated")
    state = _best_state(run)
    clients = {}
    for partition in range(options.num_clients):
        _, metrics = personal_model(options, partition, state, personal_options)
        clients[partition] = {key: round(value, 4) if isinstance(value, float) else value for key, value in metrics.items()}
    improved = [c["personal_wer"] < c["global_wer"] for c in clients.values()]
    return {
        "options": options.to_config() | {"personal": asdict(personal_options)},
        "best_round": json.loads((run.path / "test.json").read_text()),
        "clients": clients,
        "mean_global_wer": round(float(np.mean([c["global_wer"] for c in clients.values()])), 4),
        "mean_personal_wer": round(float(np.mean([c["personal_wer"] for c in clients.values()])), 4),
        "share_improved": round(sum(improved) / len(improved), 3),
    }


def _half_untranscribed(prepared: Path, options: AsrFederationOptions, out: Path) -> tuple[Path, list[int]]:
    """``prepared`` with the transcripts of every second client's speakers removed (labels: the prompt only, as
    `asr prepare --keep-untranscribed` leaves them), and those clients' numbers."""
    from fedwhisper.asr.federated import partitioner
    from fedwhisper.asr.prepare import MANIFEST, label_ids
    from fedwhisper.models.registry import load_whisper

    split = partitioner(str(prepared.resolve()), options.num_clients, options.seed).dataset
    unlabelled = list(range(1, options.num_clients, 2))
    speakers = {s for s, office in zip(split["speaker_id"], split["office"]) if office in unlabelled}
    if not (out / "dataset_dict.json").is_file():
        dataset, manifest = load_features(prepared)
        prompt = label_ids(load_whisper(options.model)[1].tokenizer, "", manifest["multilingual"], "en", "transcribe")
        dataset["train"] = dataset["train"].map(
            lambda row: {"transcription": "", "labels": prompt} if row["speaker_id"] in speakers else {}
        )
        dataset.save_to_disk(str(out))
        manifest["options"]["keep_untranscribed"] = True
        (out / MANIFEST).write_text(json.dumps(manifest))
    return out, unlabelled


def unlabelled(work: Path, small: bool) -> dict:
    """Half the clients hold audio without transcripts: they pseudo-label on the device (the recipe's default), or are
    left out; against every client labelled. The best round's model of each on the held-out speakers (clip windows)."""
    prepared = features(work, "tiny.en")
    options = _options(work, small, "tiny.en", prepared, **({} if small else SHORTER))
    half, unlabelled_clients = _half_untranscribed(prepared, options, work / "features-half-untranscribed")
    runs = {
        "all_labelled": options,
        "left_out": replace(options, features=str(half), pseudo_labels="off"),
        "pseudo_labelled": replace(options, features=str(half)),
    }
    limit = 40 if small else 0
    results = {"options": options.to_config(), "unlabelled_clients": unlabelled_clients}
    for name, run_options in runs.items():
        run = _simulated(run_options, work / name)
        best = json.loads((run.path / "test.json").read_text())
        tested = evaluate_data(prepared, str(run.path / "best"), "test", DecodingOptions(batch_size=16), limit, window="clip")
        results[name] = {
            "best_round": best["round"],
            "validation_wer": best["validation_wer"],
            "held_out": _scored(tested),
            "pseudo_labelled_per_round": [row.get("pseudo_labelled") for row in run.rows[1:]],
            "pseudo_candidates_per_round": [row.get("pseudo_candidates") for row in run.rows[1:]],
        }
    gap = results["left_out"]["held_out"]["wer"] - results["all_labelled"]["held_out"]["wer"]
    closed = results["left_out"]["held_out"]["wer"] - results["pseudo_labelled"]["held_out"]["wer"]
    results["gap_closed"] = round(closed / gap, 3) if gap > 0 else None
    return results


# the recipe's ablations, each a federation of tiny.en on the train/ clients: (sentence-case labels, changed options,
# interpolations its best model is scored at). default: as it ran before interpolation was the served default
RECIPE_RUNS = {
    "default-recase": (True, {"interpolation": 1.0}, (1.0, 0.5)),
    "caps-r4": (False, {"interpolation": 1.0, "rounds": 4}, (1.0,)),
    "ffa-r3": (True, {"interpolation": 1.0, "lora_freeze_a": True, "rounds": 3}, (1.0,)),
}


def recipe(work: Path, small: bool) -> dict:
    """What decided the recipe: each run's validation WER per round (clip windows, the server's first clips), its best
    round's model on every validation clip and on two forgetting sets (flite voices, LJSpeech; 30-s windows), served at
    each interpolation with the pretrained model (WiSE-FT: pretrained + alpha x the update); the pretrained model on
    the same clips."""
    import fl_asr_bench
    from fedwhisper.models.registry import load_whisper

    out_of_domain_sets = out_of_domain(work / "ood", small)
    results: dict = {"options": {"model": "tiny.en", "runs": {k: v[1] for k, v in RECIPE_RUNS.items()}}}

    def scored(model_ref: str, validation) -> dict:
        scores = {"validation": fl_asr_bench._wer(model_ref, validation, "en", "full")}
        for name in ("flite", "ljspeech"):
            scores[name] = fl_asr_bench._wer(model_ref, fl_asr_bench._spread(out_of_domain_sets[name], 100), "en", "full")
        return {name: score["wer"] for name, score in scores.items()}

    for name, (recase, changes, alphas) in RECIPE_RUNS.items():
        prepared = work / ("features-tiny.en" if recase else "features-caps")
        options = PrepareOptions(num_proc=2, validation_speakers=VALIDATION_SPEAKERS, test_speakers=TEST_SPEAKERS, recase=recase)
        prepare_features(train_dir(), "tiny.en", prepared, options)
        validation = load_features(prepared)[0]["validation"]
        results.setdefault("pretrained", scored("tiny.en", validation))
        scale = {"rounds": 1, "eval_clips": 20} if small else {}
        run = _simulated(_options(work, small, "tiny.en", prepared, **(changes | scale)), work / name)
        entry = {"recase": recase, "validation_wer_per_round": [round(row["wer"], 4) for row in run.rows]}
        for alpha in alphas:
            served = run.path / "best" if alpha == 1.0 else work / f"{name}-wise{alpha}"
            if not (served / "config.json").is_file():  # best/ holds the update as trained (interpolation 1.0)
                base, processor = load_whisper("tiny.en")
                tuned, _ = load_whisper(str(run.path / "best"))
                weights = base.state_dict()
                tuned.load_state_dict({k: weights[k] + alpha * (v - weights[k]) for k, v in tuned.state_dict().items()})
                tuned.save_pretrained(served)
                processor.save_pretrained(served)
            entry[f"interpolation_{alpha}"] = scored(str(served), validation)
        results[name] = entry
    return results


def confidence(work: Path, small: bool) -> dict:
    """The pseudo-label filter's evidence (after the ``federated`` part): the served federated model labels the validation
    speakers' clips as a device would (greedy, clip windows); for each log-prob floor, the clips kept and the WER of their
    labels against the references, and of the clips dropped."""
    from fedwhisper.asr.batches import AsrBatches
    from fedwhisper.asr.evaluate import evaluate_batches
    from fedwhisper.asr.prepare import label_ids
    from fedwhisper.asr.pseudo import MAX_COMPRESSION_RATIO, compression_ratio, mean_log_probs
    from fedwhisper.metrics import word_error_rate
    from fedwhisper.models.registry import load_whisper

    federated_work = work.parent / "real-federated"
    served = federated_work / "federated" / "best"
    if not served.is_dir():
        raise FedwhisperError(f"{served}: run the real suite's federated part first")
    split = load_features(features(federated_work, "tiny.en"))[0]["validation"]
    split = split.select(range(min(len(split), 40 if small else len(split))))
    model, processor = load_whisper(str(served))
    start = model.config.decoder_start_token_id
    decoded = evaluate_batches(model, processor.tokenizer, AsrBatches(split, start, window="clip"), DecodingOptions())
    texts = [row["hypothesis"] for row in decoded["rows"]]
    labels = [label_ids(processor.tokenizer, text, False, "en", "transcribe") for text in texts]
    labelled = split.remove_columns(["labels"]).add_column("labels", labels)
    scores = mean_log_probs(model, AsrBatches(labelled, start, window="clip"), 8)
    references = split["transcription"]

    def wer(rows: list[int]) -> float | None:
        return round(word_error_rate([references[i] for i in rows], [texts[i] for i in rows], "en"), 4) if rows else None

    floors = {}
    for floor in (-0.2, -0.3, -0.5, -0.75, -1.0):
        kept = [
            i
            for i, (text, score) in enumerate(zip(texts, scores))
            if text.strip() and score >= floor and compression_ratio(text) <= MAX_COMPRESSION_RATIO
        ]
        dropped = sorted(set(range(len(texts))) - set(kept))
        floors[str(floor)] = {"kept": len(kept), "kept_wer": wer(kept), "dropped": len(dropped), "dropped_wer": wer(dropped)}
    return {"options": {"model": str(served), "split": "validation", "window": "clip"}, "clips": len(split), "floors": floors}


def _finished_federation(work: Path, part: str) -> Path:
    """real:federated's finished run directory, which ``part`` scores."""
    run = work.parent / "real-federated" / "federated"
    if not (run / "test.json").is_file():
        raise FedwhisperError(f"real:{part} scores real:federated's finished run; run real:federated first (no {run}/test.json)")
    return run


def serving(work: Path, small: bool) -> dict:
    """Decoding speed and WER on the held-out clips, 30-s windows, in one run: faster-whisper as a user calls it
    (``WhisperModel.transcribe`` per clip, greedy) on pretrained tiny.en's int8 export; the ctranslate2 backend
    (batched, on prepared log-mels) on the same export and on the federated model's; the transformers path on the
    federated model. Needs real:federated's best model."""
    from fedwhisper.audio import SAMPLE_RATE, load_audio
    from fedwhisper.backends import load_ctranslate2
    from fedwhisper.metrics import word_error_rate
    from fedwhisper.models.export import ctranslate2_model_dir
    from fedwhisper.models.registry import load_processor

    run = _finished_federation(work, "serving")
    best = run / "best"
    prepared = features(run.parent, "tiny.en")
    held_out = load_features(prepared)[0]["test"]
    limit = 40 if small else len(held_out)
    clips = [load_audio(path) for path in held_out["path"][:limit]]
    references = held_out["transcription"][:limit]
    audio_seconds = sum(clip.size for clip in clips) / SAMPLE_RATE
    pretrained_export = ctranslate2_model_dir("tiny.en")
    # CTranslate2 on 30-s windows, 2 cores, 120 of these clips: batches of 1 / 4 / 8 / 16 ran 13.3-18.5 / 13.2-14.3 /
    # 12.2-12.6 / 11.8-11.9x real time (two repeats), faster-whisper alone 10.7-12.3x; transformers batches 16
    batches = {"ctranslate2": 4, "transformers": 16}
    results: dict = {"options": {"model": "tiny.en", "clips": limit, "window": "full", "batch_size": batches, "threads": 2}}

    whisper = load_ctranslate2(pretrained_export)  # faster-whisper's WhisperModel: the export's int8, 2 threads here

    def alone(clip):
        segments, _ = whisper.transcribe(
            clip, language="en", beam_size=1, temperature=0.0, without_timestamps=True, condition_on_previous_text=False
        )
        return " ".join(segment.text.strip() for segment in segments)

    alone(clips[0])  # warm-up, as the backend's first batch is not timed apart either
    started = time.perf_counter()
    hypotheses = [alone(clip) for clip in clips]
    seconds = time.perf_counter() - started
    results["faster_whisper_pretrained"] = {
        "wer": round(word_error_rate(references, hypotheses, "en"), 4),
        "audio_seconds_per_second": round(audio_seconds / seconds, 2),
    }
    # the backend decodes log-mels prepared once by `asr prepare`; what computing them costs, on the same clips
    extractor = load_processor("tiny.en").feature_extractor
    started = time.perf_counter()
    for start in range(0, len(clips), 16):
        extractor(clips[start : start + 16], sampling_rate=SAMPLE_RATE, return_tensors="np")
    log_mel_seconds = time.perf_counter() - started
    results["log_mel_audio_seconds_per_second"] = round(audio_seconds / log_mel_seconds, 2)
    for name, model, backend in (
        ("ctranslate2_pretrained", "tiny.en", "ctranslate2"),
        ("ctranslate2_federated", str(ctranslate2_model_dir(str(best))), "ctranslate2"),
        ("transformers_federated", str(best), "transformers"),
    ):
        decoding = DecodingOptions(batch_size=batches[backend])
        result = evaluate_data(prepared, model, "test", decoding, limit, window="full", backend=backend)
        results[name] = _scored(result) | {
            "with_log_mels_audio_seconds_per_second": round(result["audio_seconds"] / (result["seconds"] + log_mel_seconds), 2)
        }

    def speed(name: str) -> float:  # log-mels included (faster-whisper computes its own)
        return results[name].get("with_log_mels_audio_seconds_per_second") or results[name]["audio_seconds_per_second"]

    results["ctranslate2_over_faster_whisper"] = round(speed("ctranslate2_pretrained") / speed("faster_whisper_pretrained"), 2)
    results["ctranslate2_over_transformers_federated"] = round(
        speed("ctranslate2_federated") / speed("transformers_federated"), 2
    )
    return results


INTERPOLATIONS = (0.3, 0.4, 0.5, 0.7)


def interpolation(work: Path, small: bool) -> dict:
    """The served model's share of the federated update (WiSE-FT, `--interpolation`): real:federated's best round
    served at each share, on every validation clip, 100 spread flite clips and every LJSpeech clip (30-s windows),
    beside the pretrained model on the same clips. Needs real:federated's finished run."""
    import fl_asr_bench
    from fedwhisper.asr.federated import ServerEvaluator, served_state
    from fedwhisper.asr.run import load_trainable_state
    from fedwhisper.runs import RunDirectory

    run = _finished_federation(work, "interpolation")
    federation = run.parent
    prepared = features(federation, "tiny.en")
    options = _options(federation, small, "tiny.en", prepared)
    validation = load_features(prepared)[0]["validation"]
    ood = out_of_domain(federation, small)
    limit = 40 if small else None
    sets = {
        "validation": validation.select(range(min(limit or len(validation), len(validation)))),
        "flite": fl_asr_bench._spread(ood["flite"], limit or 100),
        "ljspeech": ood["ljspeech"],
    }

    def scored(model_ref: str) -> dict:
        return {name: fl_asr_bench._wer(model_ref, clips, "en", "full")["wer"] for name, clips in sets.items()}

    state = _best_state(RunDirectory(run))
    results: dict = {"options": {"run": options.to_config(), "interpolations": INTERPOLATIONS}, "pretrained": scored("tiny.en")}
    for alpha in INTERPOLATIONS:
        served = work / f"served-{alpha}"
        if not (served / "config.json").is_file():
            evaluator = ServerEvaluator(replace(options, interpolation=alpha, eval_clips=1))
            load_trainable_state(evaluator.model, served_state(evaluator.options, state))
            evaluator.save_model(served)
        results[f"interpolation_{alpha}"] = scored(str(served))
    return results


PARTS = {
    "pretrained": pretrained,
    "federated": federated,
    "serving": serving,
    "interpolation": interpolation,
    "federated_base": federated_base,
    "personal": personal,
    "unlabelled": unlabelled,
    "confidence": confidence,
    "recipe": recipe,
}
RESUMABLE = tuple(PARTS)  # prepared features and finished federations are kept between runs
