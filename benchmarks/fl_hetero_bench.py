"""Heterogeneous clients: FedKAD against FedMD, uniform FedAvg (the weakest tier's model for all) and large-only FedAvg
(devices that cannot train the full-size model left out), same corpus, clients, tiers, rounds and client steps.

The English corpus (the ASR suite's espeak-ng speakers) with one twist that makes device tiers matter to speakers: a
Pi-class device records through a cheap microphone (telephone band, fan noise), so the Pi clients' speakers and half of
the held-out test speakers are heard through that channel. The server's proxy corpus: other voices reading other
sentences, clean.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

import asr_bench
from fedwhisper.asr import hetero
from fedwhisper.asr.federated import AsrFederationOptions, partitioner
from fedwhisper.asr.prepare import PrepareOptions, load_features, prepare_features
from fedwhisper.asr.tiers import assign_tiers, ordered_tiers
from fedwhisper.audio import SAMPLE_RATE, load_audio, write_audio
from fedwhisper.data import noise
from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder
from fedwhisper.fl.asr_app import simulate

ALGORITHMS = ("fedkad", "fedmd", "fedavg-uniform", "fedavg-large")
FEDERATION = {
    "num_clients": 20,
    "clients_per_round": 6,
    "rounds": 8,
    "local_steps": 8,
    "batch_size": 8,
    "learning_rate": 5e-4,
    "eval_clips": 60,
    "server_steps": 8,
    "public_clips": 32,
}
SMALL = {
    "num_clients": 6,
    "clients_per_round": 3,
    "rounds": 2,
    "local_steps": 2,
    "batch_size": 4,
    "eval_clips": 8,
    "server_steps": 2,
    "public_clips": 8,
}


def pi_microphone(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cheap device's channel: telephone band (8 kHz sampling and back) and fan noise at 5-10 dB SNR."""
    import soxr

    narrow = soxr.resample(soxr.resample(samples, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)[: len(samples)]
    return noise.mix_at_snr(narrow, noise.fan(rng, len(narrow)), rng.uniform(5, 10)).astype(np.float32)


def tiered_corpus(work: Path, small: bool, options: AsrFederationOptions) -> tuple[Path, dict]:
    """The English corpus prepared for tiny.en, with the Pi clients' speakers and half the test speakers re-recorded
    through ``pi_microphone``; returns the features and which speakers went through it."""
    clean_features, _, _ = asr_bench.english_features(work, small)
    out = work / "asr-en-tiered"
    features = work / "features-en-tiered"
    if (features / "dataset_dict.json").is_file():
        return features, json.loads((work / "pi-speakers.json").read_text())
    tiers = assign_tiers(options.num_clients, options.tiers, options.seed)
    split = partitioner(str(clean_features.resolve()), options.num_clients, options.seed)
    on_pi = sorted({s for k, tier in enumerate(tiers) if tier == "pi" for s in split.load_partition(k)["speaker_id"]})
    test_speakers = sorted(set(load_features(clean_features)[0]["test"]["speaker_id"]))
    pi_test = test_speakers[::2]
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(work / "asr-en-espeak", out)
    for split_name in ("train", "test"):
        with open(out / split_name / "metadata.csv", newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
        for i, row in enumerate(rows):
            if row["speaker_id"] in set(on_pi) | set(pi_test):
                path = out / split_name / row["file_name"]
                write_audio(path, pi_microphone(load_audio(path), np.random.default_rng([options.seed, i, split_name == "test"])))
    prepare_features(out, "tiny.en", features, PrepareOptions(num_proc=2, validation_speakers=2 if small else 4))
    speakers = {"train_on_pi_clients": on_pi, "test_through_pi_microphone": pi_test}
    (work / "pi-speakers.json").write_text(json.dumps(speakers))
    return features, speakers


def proxy_corpus(work: Path, small: bool) -> Path:
    """The server's public corpus: espeak-ng voices of another seed reading sentences no client, test or flite clip has."""
    text = asr_bench.unused_sentences(work, "proxy-sentences.txt")
    corpus, features = work / "asr-en-proxy", work / "features-en-proxy"
    synthesize_audiofolder(
        corpus,
        AsrSynthesisOptions(
            sentences=60 if small else 400, speakers=12, test_speakers=1, engines=("espeak-ng",), seed=23, text=str(text)
        ),
    )
    prepare_features(corpus, "tiny.en", features, PrepareOptions(num_proc=2, validation_speakers=0))
    return features


def fedmd_test(options: AsrFederationOptions, run) -> dict:
    """FedMD has no server model: each tier's WER is the mean over the clients of that tier that trained in the last
    round, their own models (kept on their devices) tested on the held-out split by the simulation's operator."""
    from safetensors.torch import load_file

    from fedwhisper.asr.evaluate import speaker_wer
    from fedwhisper.asr.run import load_trainable_state

    rows = hetero.evaluation_rows(options, "test")
    tiers = assign_tiers(options.num_clients, options.tiers, options.seed)
    result = {}
    for tier in ordered_tiers(options.tiers):
        wers, speakers = [], {}
        for k in [k for k, t in enumerate(tiers) if t == tier]:
            saved = options.cache_root / f"fedmd-client-{k}" / f"round-{options.rounds:03d}.safetensors"
            if not saved.is_file():
                continue
            model = hetero.new_model(options, hetero.model_layers(options, tier))
            load_trainable_state(model, load_file(str(saved)))
            tested = hetero.evaluate_model(options, model, rows)
            wers.append(tested["wer"])
            for speaker, value in speaker_wer(tested["rows"], "en").items():
                speakers.setdefault(speaker, []).append(value)
        if wers:
            result[tier] = {
                "tiers": [tier],
                "wer": float(np.mean(wers)),
                "clients": len(wers),
                "speakers": {s: float(np.mean(v)) for s, v in speakers.items()},
            }
    return result


def round_wer(row: dict) -> float | None:
    """A round's validation WER: the global model's, or (fedmd, no global model) the mean over tiers."""
    tiers = [v for k, v in row.items() if k.startswith("wer/")]
    return row.get("wer", float(np.mean(tiers)) if tiers else None)


TARGET = "fedavg-uniform"  # device time is measured to the final validation WER of uniform FedAvg, the baseline


def seconds_to_target(compare: dict, algorithm: str) -> float | None:
    """Simulated device time until ``algorithm``'s validation WER first reaches uniform FedAvg's final one (None: never).
    A common target, not each run's own last value: a curve that stalls at a worse WER would otherwise look fast."""
    target = compare[TARGET]["validation_wer_curve"][-1]
    r = compare[algorithm]
    reached = next((i for i, w in enumerate(r["validation_wer_curve"]) if w is not None and w <= target + 1e-9), None)
    return None if reached is None else r["simulated_seconds_cumulative"][reached]


def plot_wer_vs_bytes(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for algorithm in ALGORITHMS:
        r = results[algorithm]
        points = [(b / 1e6, 100 * w) for b, w in zip(r["upload_bytes_cumulative"], r["validation_wer_curve"]) if w is not None]
        axis.plot(*zip(*points), marker="o", label=algorithm)
    axis.set(
        xlabel="cumulative upload, MB (all clients)",
        ylabel="validation WER % (global model; fedmd: tier mean)",
        title="Heterogeneous clients: WER vs upload",
        xscale="symlog",
    )
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _summary(algorithm: str, run, tested: dict, pi: dict, seconds: float) -> dict:
    rows = run.rows
    uploads = np.cumsum([sum(row.get("bytes_up", [])) for row in rows]).tolist()
    curve = [round_wer(row) for row in rows]
    simulated = np.cumsum([row.get("simulated_round_seconds", 0) for row in rows]).round(1).tolist()
    per_tier = {tier: result["wer"] for result in tested.values() for tier in result["tiers"]}
    speakers = {}
    for group, result in tested.items():
        pi_test = [result["speakers"][s] for s in pi["test_through_pi_microphone"] if s in result["speakers"]]
        clean = [v for s, v in result["speakers"].items() if s not in pi["test_through_pi_microphone"]]
        speakers[group] = {
            "pi_microphone_speakers": round(float(np.mean(pi_test)), 4),
            "other_speakers": round(float(np.mean(clean)), 4),
        }
    final = rows[-1]
    return {
        "algorithm": algorithm,
        "seconds": round(seconds, 1),
        "test_wer_by_tier": per_tier,
        "global_test_wer": None if algorithm == "fedmd" else tested[list(tested)[-1]]["wer"],  # fedkad: the strongest tier's
        "test_wer_by_speaker_group": speakers,
        "upload_bytes_total": int(uploads[-1]),
        "upload_bytes_cumulative": uploads,
        "validation_wer_by_round": [{k: v for k, v in row.items() if k.startswith("wer")} for row in rows],
        "validation_wer_curve": curve,
        "simulated_seconds_cumulative": simulated,
        "stragglers": sum(len(row.get("stragglers", [])) for row in rows),
        "clients_trained": [row.get("clients_trained") for row in rows[1:]],
        "final_validation": {k: v for k, v in final.items() if k.startswith("wer")},
    }


def _tensor_bytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def compare(work: Path, small: bool) -> dict:
    started = time.perf_counter()
    base = AsrFederationOptions(model="tiny.en", window="clip", cache_dir=str(work / "cache"), **(SMALL if small else FEDERATION))
    features, pi = tiered_corpus(work, small, base)
    proxy = proxy_corpus(work, small)
    base = replace(base, features=str(features), proxy=str(proxy))
    results = {"options": base.to_config(), "pi_speakers": pi, "setup_seconds": round(time.perf_counter() - started, 1)}
    # per-sample training cost of each tier's model on this machine, measured once: all decoder blocks, or fedkad's top block
    costs = {name: hetero.measure_costs(replace(base, algorithm=name)) for name in ("fedmd", "fedkad")}
    results["seconds_per_sample"] = {"all_blocks": costs["fedmd"], "fedkad_top_block": costs["fedkad"]}
    for algorithm in ALGORITHMS:
        measured = costs["fedkad" if algorithm == "fedkad" else "fedmd"]
        options = replace(base, algorithm=algorithm, tier_costs=",".join(f"{k}:{v}" for k, v in measured.items()))
        run_dir = work / f"run-{algorithm}"
        shutil.rmtree(run_dir, ignore_errors=True)
        for kept in Path(options.cache_dir).glob(
            "fedmd-client-*"
        ):  # fedmd's clients keep their models there; the tiers' starting models stay
            shutil.rmtree(kept)
        begun = time.perf_counter()
        run = simulate(options, run_dir)
        tested = fedmd_test(options, run) if algorithm == "fedmd" else json.loads((run_dir / "test.json").read_text())
        results[algorithm] = _summary(algorithm, run, tested, pi, time.perf_counter() - begun)
    full_size = _tensor_bytes(hetero.initial_state(replace(base, algorithm="fedavg-large")))
    trained = sum(results["fedkad"]["clients_trained"])
    results["fedavg_full_size_upload_bytes_same_clients"] = (
        trained * full_size
    )  # FedAvg had every fedkad client sent a full-size decoder
    results["fedkad_upload_over_full_size_fedavg"] = round(results["fedkad"]["upload_bytes_total"] / (trained * full_size), 4)
    plot_wer_vs_bytes(
        results, Path(__file__).resolve().parent / "results" / f"fl-hetero-wer-vs-upload{'-small' if small else ''}.png"
    )
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


@dataclass(frozen=True)
class WeakTierVariant:
    """One way to update the weakest tier's model in a FedKAD round (``replay_weakest_tier``)."""

    server_kd_steps: int = 0  # the server's distillation from the global model (0: none)
    # what the other tiers' clients of the round add: "" (nothing), "nested" (their top block, trained over their stack and
    # as the weak model: FedKAD as run), "top-block" (the same without nesting), "full-block" (fedavg-uniform's update)
    others: str = "nested"


WEAK_TIER_VARIANTS = {
    "as-run": WeakTierVariant(),
    "as-run-plus-server-kd": WeakTierVariant(server_kd_steps=8),
    "weak-clients-only-server-kd": WeakTierVariant(server_kd_steps=8, others=""),  # FedKAD before nesting
    "weak-clients-only": WeakTierVariant(others=""),
    "others-top-blocks-without-nesting": WeakTierVariant(others="top-block"),
    "others-full-block": WeakTierVariant(others="full-block"),
}


def replay_weakest_tier(config: dict, run_dir: str, name: str) -> dict:
    """The weakest tier's model through the 8 rounds of a finished FedKAD run, updated as ``WEAK_TIER_VARIANTS[name]``
    says, against the run's own global-model trajectory (its saved states): the same number of weak-tier clients per
    round as the run (and of each other tier, for variants that use them), taken in turn; validation WER each round,
    test WER at the end, and what the other tiers' clients would upload on top of FedKAD's top blocks."""
    import torch
    from safetensors.torch import load_file

    from fedwhisper.asr.federated import local_training
    from fedwhisper.asr.run import load_trainable_state, trainable_state

    torch.set_num_threads(1)
    variant, options = WEAK_TIER_VARIANTS[name], AsrFederationOptions.from_config(config)
    run_dir = Path(run_dir)
    rows = json.loads((run_dir / "metrics.json").read_text())
    weak, *_, strong = ordered_tiers(options.tiers)
    tiers = assign_tiers(options.num_clients, options.tiers, options.seed)
    members = {t: [k for k, tier in enumerate(tiers) if tier == t] for t in set(tiers)}
    saved = lambda r: load_file(str(run_dir / f"tiers-round-{r:03d}.safetensors"))  # noqa: E731
    model = hetero.new_model(options, hetero.model_layers(options, weak))
    load_trainable_state(model, hetero.group_state(saved(0), weak))
    global_model = hetero.new_model(options, hetero.model_layers(options, strong))
    proxy = hetero.ProxyBatches(options, global_model)
    optimizer = hetero.trainable_optimizer(model, options.kd_learning_rate)
    taken, curve, extra_up = {t: 0 for t in members}, [hetero.validation_wer(options, model)], []
    for r in range(1, options.rounds + 1):
        previous = saved(r - 1)
        old = trainable_state(model)
        deltas = []  # (update of the weak model, examples)
        for tier in rows[r]["client_tiers"]:
            client = members[tier][taken[tier] % len(members[tier])]
            taken[tier] += 1
            if tier == weak or variant.others == "full-block":
                trainee = hetero.new_model(options, hetero.model_layers(options, weak))
                load_trainable_state(trainee, old)
                arrays, metrics = local_training(trainee, hetero.train_config(options), options, client, r)
                if tier != weak:
                    extra_up.append(_tensor_bytes(arrays))
            elif variant.others in (
                "nested",
                "top-block",
            ):  # the client's FedKAD upload, its top block, in the weak model's place
                layers, weak_top = hetero.model_layers(options, tier), hetero.model_layers(options, weak) - 1
                trainee = hetero.new_model(options, layers, options.upper_blocks)
                mine = hetero.group_state(previous, tier)
                if variant.others == "nested":  # the shared top block is the weak model's
                    shared = hetero.uploaded_keys(options, weak, old)
                    mine |= {k.replace(f"layers.{weak_top}.", f"layers.{layers - 1}."): v for k, v in old.items() if k in shared}
                load_trainable_state(trainee, mine)
                loss = hetero.nested_loss(options, trainee) if variant.others == "nested" else None
                top, metrics = local_training(trainee, hetero.train_config(options), options, client, r, loss_fn=loss)
                arrays = {k.replace(f"layers.{layers - 1}.", f"layers.{weak_top}."): v for k, v in top.items()}
            else:
                continue
            deltas.append(({k: arrays[k] - old[k] for k in old}, metrics["num-examples"]))
        total = sum(w for _, w in deltas)
        load_trainable_state(model, {k: old[k] + sum(w / total * d[k] for d, w in deltas) for k in old})
        if variant.server_kd_steps:
            load_trainable_state(global_model, hetero.group_state(saved(r), strong))
            first = (r - 1) * variant.server_kd_steps
            hetero.distil(model, [global_model], [proxy[first + i] for i in range(variant.server_kd_steps)], optimizer)
        curve.append(hetero.validation_wer(options, model))
    test = hetero.evaluate_model(options, model, hetero.evaluation_rows(options, "test"))["wer"]
    return {
        "validation_wer_curve": curve,
        "test_wer": test,
        "extra_upload_bytes_per_other_client": float(np.mean(extra_up)) if extra_up else 0.0,
    }


def weakest_tier(work: Path, small: bool) -> dict:
    """What moves FedKAD's weakest tier against fedavg-uniform's model: ``replay_weakest_tier`` for every variant, two at a time,
    from the FedKAD run of the suite's last ``compare`` (run ``benchmarks/run.py fl-hetero`` first; this part is not in
    the suite's default run, which the issue bounds to 45 minutes)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    suite = json.loads((Path(__file__).resolve().parent / "results" / f"fl-hetero{'-small' if small else ''}.json").read_text())[
        "compare"
    ]
    source = Path(suite["options"]["features"]).parent  # that part's work directory
    measured = suite["seconds_per_sample"]["fedkad_top_block"]
    config = suite["options"] | {
        "algorithm": "fedkad",
        "eval_clips": 2 * suite["options"]["eval_clips"],
        "tier_costs": ",".join(f"{k}:{v}" for k, v in measured.items()),
    }
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            name: pool.submit(replay_weakest_tier, config, str(source / "run-fedkad"), name) for name in WEAK_TIER_VARIANTS
        }
        replays = {name: future.result() for name, future in futures.items()}
    full_size = suite["fedavg_full_size_upload_bytes_same_clients"] / sum(suite["fedkad"]["clients_trained"])
    weak = ordered_tiers(suite["options"]["tiers"])[0]
    rows = json.loads((source / "run-fedkad" / "metrics.json").read_text())
    others = sum(tier != weak for row in rows for tier in row.get("client_tiers") or [])
    return {
        "options": config,
        "variants": {name: asdict(v) for name, v in WEAK_TIER_VARIANTS.items()},
        "replays": replays,
        "fedavg_uniform_test_wer": suite["fedavg-uniform"]["test_wer_by_tier"][weak],
        "fedkad_test_wer": suite["fedkad"]["test_wer_by_tier"][weak],
        "full_size_upload_bytes_per_client": full_size,
        "other_tier_clients": others,
    }


PARTS = {"compare": compare, "weakest-tier": weakest_tier}
DEFAULT_PARTS = ("compare",)  # weakest-tier runs on demand, after it
