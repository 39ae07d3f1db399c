"""Short federated runs on Flower's simulation engine: tiny random Whisper, tiny corpus, 2 rounds, then resume."""

import json
from pathlib import Path

import pytest

from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.kws_app import simulate
from fedwhisper.kws.model import load_head
from fedwhisper.kws.task import KwsOptions, client_examples, client_update, new_head

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def options(tiny_whisper_dir, tiny_kws_corpus, tmp_path):
    return KwsOptions(corpus=str(tiny_kws_corpus), model=str(tiny_whisper_dir), keywords="yes,no,up", num_clients=3,
                      clients_per_round=2, rounds=2, local_epochs=1, cache_dir=str(tmp_path / "cache"))


def test_two_rounds_record_every_round_and_its_head(options, tmp_path):
    """(Resume after an interruption: tests/test_interruptions.py.)"""
    run_dir = tmp_path / "run"
    seen = []
    run = simulate(options, run_dir, on_round=seen.append)
    assert [row["round"] for row in run.rows] == [0, 1, 2] == [row["round"] for row in seen]
    assert all(row["clients_trained"] == 2 for row in run.rows[1:])
    assert run.rows[1]["clips_encoded"] > 0  # each client encodes its own clips (once: test_client_trains_from_its_cache)
    for name in ("metrics.json", "metrics.csv", "accuracy.png", "head.safetensors", "head-round-002.safetensors", "options.json",
                 "federation.log"):
        assert (run_dir / name).is_file(), name
    _, meta = load_head(run_dir / "head.safetensors")
    assert meta["classes"] == ["yes", "no", "up", "_silence_", "_unknown_"] and meta["positions"] == 50


def test_the_same_seed_gives_the_same_rounds_and_the_same_head(options, tmp_path):
    """Clients drawn by name and seed, replies aggregated in name order, each client's training seeded per round."""
    for i in range(2):
        simulate(KwsOptions(**{**options.to_config(), "num_clients": 6, "clients_per_round": 3, "cache_dir": str(tmp_path / f"cache-{i}")}),
                 tmp_path / f"run-{i}")
    rows = [json.loads((tmp_path / f"run-{i}" / "metrics.json").read_text()) for i in range(2)]
    untimed = [[{k: v for k, v in row.items() if "seconds" not in k} for row in run] for run in rows]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 3
    assert (tmp_path / "run-0" / "head.safetensors").read_bytes() == (tmp_path / "run-1" / "head.safetensors").read_bytes()


def test_a_deployed_client_trains_on_its_own_corpus_directory(options, tiny_kws_corpus):
    from flwr.app import Context, RecordDict

    from fedwhisper.fl.kws_app import client_options
    from fedwhisper.kws.task import corpus_for

    run_config = {**options.to_config(), "corpus": "/the/server/does/not/know/it"}
    deployed, partition = client_options(run_config, Context(1, 7, {"corpus": str(tiny_kws_corpus)}, RecordDict(), run_config))
    assert (deployed.corpus, deployed.num_clients, partition) == (str(tiny_kws_corpus), 1, 0)
    train = corpus_for(deployed).splits["train"]
    assert len(client_examples(deployed, 0).speakers) >= len(train)  # every training clip of its corpus (plus silence)
    simulated, partition = client_options(options.to_config(), Context(1, 7, {"partition-id": 2, "num-partitions": 3}, RecordDict(), {}))
    assert (simulated, partition) == (options, 2)


def test_a_fresh_run_refuses_a_used_directory_and_resume_needs_a_run(options, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "metrics.json").write_text(json.dumps([{"round": 0}]))
    with pytest.raises(FedwhisperError, match="already holds a run"):
        simulate(options, tmp_path / "used")
    with pytest.raises(FedwhisperError, match="nothing to resume"):
        simulate(options, tmp_path / "empty", resume=True)


def test_client_trains_from_its_cache_and_small_clients_are_skipped(options):
    state = new_head(options).state_dict()
    new_state, metrics = client_update(options, 0, state, round_number=1)
    assert metrics["encoded-clips"] > 0 and metrics["num-examples"] > 0
    assert set(new_state) == set(state)  # only head weights leave the client
    _, again = client_update(options, 0, state, round_number=2)
    assert again["encoded-clips"] == 0  # second round: everything from the cache
    skipped_state, skipped = client_update(KwsOptions(**{**options.to_config(), "min_client_examples": 10_000}), 0, state, 1)
    assert skipped_state is None and skipped["num-examples"] == 0


def test_pyproject_run_config_names_every_option_of_each_task():
    import tomllib

    from flwr.common.config import flatten_dict

    from fedwhisper.asr.federated import AsrFederationOptions
    from fedwhisper.fl.app import task_config

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    run_config = flatten_dict(config)  # as Flower gives it to the apps
    for task, options in (("kws", KwsOptions), ("asr", AsrFederationOptions)):
        assert {key.replace("-", "_") for key in config[task]} == set(options().to_config())
        name, task_options = task_config({**run_config, "task": task})
        assert name == task and task_options["run-dir"] == config["run-dir"]
        defaults, parsed = options().to_config(), options.from_config(task_options).to_config()
        assert {key for key in defaults if parsed[key] != defaults[key]} <= {"corpus"}  # pyproject's defaults are the code's
    with pytest.raises(FedwhisperError, match="task must be one of kws, asr"):
        task_config({"task": "stt"})


def test_more_clients_than_training_speakers_stops_before_round_one(options, tmp_path):
    with pytest.raises(FedwhisperError, match="at least as many training speakers"):
        simulate(KwsOptions(**{**options.to_config(), "num_clients": 500}), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_sign_flipping_client_is_kept_out_by_the_median_and_dp_runs_report_epsilon(options, tmp_path):
    attacked = KwsOptions(**{**options.to_config(), "clients_per_round": 3, "attack": "scale", "attackers": 1, "norm_limit": 0,
                             "strategy": "median", "rounds": 1})
    run = simulate(attacked, tmp_path / "median")
    assert all(row["clients_trained"] == 3 for row in run.rows[1:])
    validated = simulate(KwsOptions(**{**attacked.to_config(), "strategy": "fedavg", "norm_limit": 3.0}), tmp_path / "validated")
    assert all(row["rejections"][0].startswith("partition-00000: update norm") for row in validated.rows[1:])
    private = simulate(KwsOptions(**{**options.to_config(), "dp_noise_multiplier": 0.5, "dp_clip": 0.5}), tmp_path / "dp")
    epsilons = [row["dp_epsilon"] for row in private.rows[1:]]
    assert 0 < epsilons[0] < epsilons[1] < float("inf")
    with pytest.raises(FedwhisperError, match="--strategy must be fedavg with --dp-noise-multiplier"):
        KwsOptions(**{**options.to_config(), "dp_noise_multiplier": 0.5, "strategy": "krum"})
