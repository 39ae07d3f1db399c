import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# xdist workers share the machine's cores: each worker, and the CLI subprocesses it starts, is held to one core (worker
# k on core k mod cores) with one torch thread; Flower's tests are the exception (below). Ray and the deployments
# pick free ports. torch reads these once, when it loads (after this file).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ALL_CORES = os.sched_getaffinity(0)
PINNED = None
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cores = sorted(ALL_CORES)
    PINNED = {cores[int(worker.removeprefix("gw")) % len(cores)]}
    os.sched_setaffinity(0, PINNED)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A test that starts Flower's processes (marker `flower`) spreads them over every core: they mostly wait on each
    other, and held to one core they would queue behind one another while the other core idles."""
    if PINNED is None or item.get_closest_marker("flower") is None:
        return (yield)
    os.sched_setaffinity(0, ALL_CORES)
    try:
        return (yield)
    finally:
        os.sched_setaffinity(0, PINNED)


@pytest.fixture(autouse=True)
def runs_in_tmp(tmp_path, monkeypatch):
    """Runs that a test does not place itself go to its tmp directory, never to the user's $FEDWHISPER_HOME/runs."""
    monkeypatch.setenv("FEDWHISPER_RUNS", str(tmp_path / "runs"))


FLOWER_PROCESSES = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-serverapp",
    "flwr-clientapp",
    "flwr-simulation",
)


SESSION = "FEDWHISPER_TEST_SESSION"  # inherited by every process the tests start, and by nothing else on the machine
os.environ[SESSION] = str(os.getpid())


def flower_processes() -> dict[int, str]:
    """Flower processes started by this test session (not another job's on the same machine)."""
    import psutil

    found = {}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        try:
            ours = process.environ().get(SESSION) == os.environ[SESSION]
        except psutil.Error:
            continue
        if ours and any(name in command for name in FLOWER_PROCESSES):
            found[process.pid] = command[:160]
    return found


@pytest.fixture(autouse=True)
def no_orphan_processes():
    """Every Flower process a test starts (SuperLink, SuperNodes, SuperExec, app processes) is gone when it ends."""
    import time

    before = set(flower_processes())
    yield
    deadline = time.monotonic() + 15
    while (left := {pid: c for pid, c in flower_processes().items() if pid not in before}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left running: {left}"


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    """FEDWHISPER_HOME shared by the tests of one run, so real weights are imported once."""
    home = Path(os.environ.get("FEDWHISPER_HOME") or tmp_path_factory.mktemp("home"))
    os.environ["FEDWHISPER_HOME"] = str(home)
    return home


def tone(seconds: float = 1.0, rate: int = 16_000, frequency: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    """A randomly initialised, English-only-sized Whisper saved as a transformers directory."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51864,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        decoder_start_token_id=50257,
    )
    out = tmp_path_factory.mktemp("tiny-whisper")
    WhisperForConditionalGeneration(config).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_asr_model(tiny_whisper_dir, tmp_path_factory, session_home) -> Path:
    """The tiny random Whisper with tiny.en's tokenizer and generation settings (same vocabulary), so it can be trained
    and decode."""
    from fedwhisper.models.registry import import_packaged_model

    source = import_packaged_model("tiny.en")
    out = tmp_path_factory.mktemp("tiny-asr") / "model"
    shutil.copytree(tiny_whisper_dir, out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(source / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_ct2(tiny_whisper_dir, tmp_path_factory):
    """CTranslate2 checkpoints of the tiny model written by CTranslate2's own converter, per quantisation."""
    import ctranslate2

    made = {}

    def convert(quantization: str) -> Path:
        if quantization not in made:
            out = tmp_path_factory.mktemp(f"ct2-{quantization}")
            ctranslate2.converters.TransformersConverter(str(tiny_whisper_dir)).convert(
                str(out), quantization=quantization, force=True
            )
            made[quantization] = out
        return made[quantization]

    return convert


@pytest.fixture(scope="session")
def tiny_kws_corpus(tmp_path_factory) -> Path:
    """12 synthetic speakers saying yes/no/up/marvin/house, with background noise: a Speech Commands folder."""
    from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands

    out = tmp_path_factory.mktemp("tiny-kws")
    synthesize_speech_commands(
        out, KwsSynthesisOptions(speakers=12, words=("yes", "no", "up", "marvin", "house"), noise_seconds=4.0)
    )
    return out


@pytest.fixture(scope="session")
def tiny_asr_corpus(tmp_path_factory) -> Path:
    from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder

    out = tmp_path_factory.mktemp("asr-corpus")
    synthesize_audiofolder(out, AsrSynthesisOptions(sentences=40, speakers=8, test_speakers=2, noise_probability=0.0))
    return out


@pytest.fixture(scope="session")
def tiny_features(tiny_asr_corpus, tiny_asr_model, tmp_path_factory) -> Path:
    from fedwhisper.asr.prepare import PrepareOptions, prepare_features

    out = tmp_path_factory.mktemp("features") / "features"
    prepare_features(tiny_asr_corpus, str(tiny_asr_model), out, PrepareOptions(shard_size=16, validation_speakers=1))
    return out


@pytest.fixture
def asr_options(tiny_features, tiny_asr_model, tmp_path):
    """The tests' small federated ASR run: LoRA rank 4, 3 clients, 2 a round, 2 rounds of 2 steps."""
    from fedwhisper.asr.federated import AsrFederationOptions

    return AsrFederationOptions(
        features=str(tiny_features),
        model=str(tiny_asr_model),
        mode="lora",
        lora_rank=4,
        lora_alpha=8,
        num_clients=3,
        clients_per_round=2,
        rounds=2,
        local_steps=2,
        batch_size=4,
        eval_clips=4,
        cache_dir=str(tmp_path / "cache"),
    )


def small_kws_options(corpus: Path, model: Path, cache_dir: Path, **changes):
    """The tests' small keyword-spotting federation: yes/no/up, 3 clients, 2 a round, 2 rounds of one local epoch."""
    from fedwhisper.kws.task import KwsOptions

    base = {"keywords": "yes,no,up", "num_clients": 3, "clients_per_round": 2, "rounds": 2, "local_epochs": 1}
    return KwsOptions(corpus=str(corpus), model=str(model), cache_dir=str(cache_dir), **(base | changes))


@pytest.fixture(scope="session")
def kws_simulated_run(tiny_whisper_dir, tiny_kws_corpus, tmp_path_factory):
    """One small keyword-spotting federation on Flower's simulation engine (3 clients, 2 a round, 2 rounds), shared by
    the tests that check its record, its reproducibility and the deployment that must match it. Returns
    (options, run directory, the rows the server reported as it went)."""
    from fedwhisper.fl.kws_app import simulate

    root = tmp_path_factory.mktemp("kws-simulated")
    options = small_kws_options(tiny_kws_corpus, tiny_whisper_dir, root / "cache")
    seen = []
    simulate(options, root / "run", on_round=seen.append)
    return options, root / "run", seen
