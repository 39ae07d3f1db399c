"""Short federated runs on Flower's simulation engine: tiny random Whisper, tiny corpus, 2 rounds, then resume."""

import json
from pathlib import Path

import pytest

from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.kws_app import build_kws_client_app, federate, simulate
from fedwhisper.kws.model import load_head
from fedwhisper.kws.task import KwsOptions, client_examples, client_update, new_head
from tests.conftest import small_kws_options
from tests.inprocess import InProcessGrid

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def options(tiny_whisper_dir, tiny_kws_corpus, tmp_path):
    return small_kws_options(tiny_kws_corpus, tiny_whisper_dir, tmp_path / "cache")


@pytest.mark.flower
@pytest.mark.xdist_group("kws-simulated")  # one worker computes the shared run
def test_two_rounds_record_every_round_and_its_head(kws_simulated_run):
    """(Resume after an interruption: tests/test_interruptions.py.)"""
    _, run_dir, seen = kws_simulated_run
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2] == [row["round"] for row in seen]
    assert all(row["clients_trained"] == 2 for row in rows[1:])
    assert rows[1]["clips_encoded"] > 0  # each client encodes its own clips (once: test_client_trains_from_its_cache)
    for name in (
        "metrics.json",
        "metrics.csv",
        "accuracy.png",
        "head.safetensors",
        "head-round-002.safetensors",
        "options.json",
        "federation.log",
    ):
        assert (run_dir / name).is_file(), name
    _, meta = load_head(run_dir / "head.safetensors")
    assert meta["classes"] == ["yes", "no", "up", "_silence_", "_unknown_"] and meta["positions"] == 50


@pytest.mark.flower
@pytest.mark.xdist_group("kws-simulated")  # one worker computes the shared run
def test_the_same_seed_gives_the_same_rounds_and_the_same_head(kws_simulated_run, tmp_path):
    """Clients drawn by name and seed, replies aggregated in name order (whichever Ray actor answers first), each
    client's training seeded per round: a second run of the same options is the first, bit for bit."""
    options, first, _ = kws_simulated_run
    simulate(KwsOptions(**{**options.to_config(), "cache_dir": str(tmp_path / "cache")}), tmp_path / "again")
    rows = [json.loads((run / "metrics.json").read_text()) for run in (first, tmp_path / "again")]
    untimed = [[{k: v for k, v in row.items() if "seconds" not in k} for row in run] for run in rows]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 3
    assert (first / "head.safetensors").read_bytes() == (tmp_path / "again" / "head.safetensors").read_bytes()


def test_a_deployed_client_trains_on_its_own_corpus_directory(options, tiny_kws_corpus):
    from flwr.app import Context, RecordDict

    from fedwhisper.fl.kws_app import client_options
    from fedwhisper.kws.task import corpus_for

    run_config = {**options.to_config(), "corpus": "/the/server/does/not/know/it"}
    deployed, partition = client_options(run_config, Context(1, 7, {"corpus": str(tiny_kws_corpus)}, RecordDict(), run_config))
    assert (deployed.corpus, deployed.num_clients, partition) == (str(tiny_kws_corpus), 1, 0)
    train = corpus_for(deployed).splits["train"]
    assert len(client_examples(deployed, 0).speakers) >= len(train)  # every training clip of its corpus (plus silence)
    simulated, partition = client_options(
        options.to_config(), Context(1, 7, {"partition-id": 2, "num-partitions": 3}, RecordDict(), {})
    )
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


def _in_process(options: KwsOptions, run_dir: Path):
    """The federation's ServerApp job and ClientApps, messages passed in this process (no Ray: these tests are about
    what a round computes; the engines are tested above and in tests/fl/test_deploy.py)."""
    config = options.to_config()
    return federate(InProcessGrid(build_kws_client_app(config), config, options.num_clients), options, run_dir)


def _distance(a: dict, b: dict) -> float:
    return sum(float(((a[k] - b[k]) ** 2).sum()) for k in a) ** 0.5


def test_a_scaling_client_is_kept_out_by_the_median(options, tmp_path):
    """One of five clients sends its update x100: it drags FedAvg's head far away, the median barely notices.
    (A sign-flipped update of honest size moves FedAvg no further than honest clients differ, here and in the
    reliability benchmark; the robust rules against sign-flipping majorities: tests/fl/test_strategy.py.)"""
    five = KwsOptions(
        **{
            **options.to_config(),
            "num_clients": 5,
            "clients_per_round": 5,
            "rounds": 1,
            "norm_limit": 0,
            "min_client_examples": 1,
        }
    )
    heads = {}
    for strategy in ("fedavg", "median"):
        for attack, attackers in (("none", 0), ("scale", 1)):
            name = f"{strategy}-{attack}"
            changes = {"strategy": strategy, "attack": attack, "attackers": attackers}
            run = _in_process(KwsOptions(**{**five.to_config(), **changes}), tmp_path / name)
            assert run.rows[-1]["clients_trained"] == 5
            heads[name] = load_head(tmp_path / name / "head.safetensors")[0].state_dict()
    moved = {strategy: _distance(heads[f"{strategy}-scale"], heads[f"{strategy}-none"]) for strategy in ("fedavg", "median")}
    assert moved["fedavg"] > 5 * _distance(heads["fedavg-none"], new_head(five).state_dict())
    assert moved["median"] < 0.05 * moved["fedavg"], moved


def test_a_scaled_update_is_rejected_by_the_norm_limit(options, tmp_path):
    scaled = KwsOptions(**{**options.to_config(), "clients_per_round": 3, "rounds": 1, "attack": "scale", "attackers": 1})
    run = _in_process(KwsOptions(**{**scaled.to_config(), "norm_limit": 3.0}), tmp_path / "validated")
    row = run.rows[-1]
    assert row["rejections"] and row["rejections"][0].startswith("partition-00000: update norm") and len(row["rejections"]) == 1
    assert row["clients_trained"] == 2


def test_dp_rounds_add_the_calibrated_noise_and_report_epsilon(options, tmp_path):
    """Clients clip their update to dp-clip, the server adds Gaussian noise of std noise x clip / clients to the mean:
    on the head's many parameters the noise, not the (clipped) update, sets the round's change."""
    private = KwsOptions(**{**options.to_config(), "dp_noise_multiplier": 0.5, "dp_clip": 0.5})
    run = _in_process(private, tmp_path / "dp")
    epsilons = [row["dp_epsilon"] for row in run.rows[1:]]
    assert 0 < epsilons[0] < epsilons[1] < float("inf")
    start = new_head(private).state_dict()
    after = load_head(tmp_path / "dp" / "head-round-001.safetensors")[0].state_dict()
    parameters = sum(value.numel() for value in start.values())
    sigma = private.dp_noise_multiplier * private.dp_clip / private.clients_per_round
    expected = sigma * parameters**0.5  # the norm of the noise; the clipped mean adds at most dp-clip to it
    assert expected > 10 * private.dp_clip
    assert abs(_distance(after, start) - expected) < private.dp_clip + 0.1 * expected


def test_dp_needs_fedavg(options):
    with pytest.raises(FedwhisperError, match="--strategy must be fedavg with --dp-noise-multiplier"):
        KwsOptions(**{**options.to_config(), "dp_noise_multiplier": 0.5, "strategy": "krum"})
