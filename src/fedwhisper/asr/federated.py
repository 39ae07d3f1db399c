"""Federated ASR fine-tuning as plain functions over (options, partition, weights): a client's round is the existing
``train_on_batches`` on its own speakers' prepared features; the server evaluates WER on held-out speakers. Only the
trainable tensors travel: LoRA adapters (peft), the encoder's top blocks, or the whole model."""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fedwhisper.asr.batches import AsrBatches
from fedwhisper.asr.run import load_trainable_state, save_plain_model, trainable_state
from fedwhisper.asr.tiers import DEFAULT_TIERS, parse_tiers
from fedwhisper.asr.train import TrainConfig, apply_mode, batches_for, decoding_options, train_on_batches
from fedwhisper.errors import FedwhisperError
from fedwhisper.models.registry import fedwhisper_home
from fedwhisper.run_config import RunConfigOptions, require

log = logging.getLogger("fedwhisper.asr")
MODES = ("lora", "encoder-top", "full")
STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedprox")  # Flower's classes (fl.strategy)
OPTIMIZERS = ("adamw", "sgd")  # a client's optimizer, new every round (clients keep no state between rounds)
LR_SCHEDULES = ("constant", "cosine")  # the clients' learning rate over the rounds
# fedavg: one model for every client (any --strategy); the others give each device tier a model it can afford (asr.hetero)
ALGORITHMS = ("fedavg", "fedkad", "fedmd", "fedavg-uniform", "fedavg-large")


@dataclass(frozen=True)
class AsrFederationOptions(RunConfigOptions):
    """One federated ASR run. Flat scalars and strings: they travel in a Flower ConfigRecord and a pyproject run config."""

    features: str = ""  # prepared features (`asr prepare`): train split partitioned by speaker, validation/test held out
    model: str = "tiny.en"
    mode: str = "lora"  # lora: adapters on encoder and decoder; encoder-top: the top encoder blocks; full: everything
    lora_rank: int = 32
    lora_alpha: int = 64
    lora_modules: str = "q_proj,v_proj,fc1,fc2"  # in every block of the adapted stacks (attention and feed-forward)
    lora_stacks: str = "encoder,decoder"  # which stacks get adapters: encoder (the acoustics), decoder (the language), both
    # lora: train (and send) B only, A frozen at its seeded start on every device (FFA-LoRA, Sun et al. 2024): the
    # average of the clients' B·A is then the average B times A, exactly, and half as many bytes travel
    lora_freeze_a: bool = False
    top_blocks: int = 2  # encoder-top: trainable top encoder blocks (the blocks below are frozen, their outputs cached)
    # encoder window in training and the server's evaluation: clip (the clip's length; ~6.5x cheaper steps, and its models
    # still work on 30-s windows) or full (30 s; more accurate per step, but its models loop on clip windows)
    window: str = "clip"
    num_clients: int = 20
    clients_per_round: int = 5
    rounds: int = 10
    local_steps: int = 10  # optimizer steps per client per round
    batch_size: int = 8
    learning_rate: float = 2e-3  # measured best of 1e-3 and 2e-3 on benchmark 2 (fl-asr:english)
    optimizer: str = "adamw"  # or sgd (momentum 0.9)
    # cosine: annealed over the rounds to a tenth (flowertune-llm's clients), as centralized training decays its rate, so
    # that the last round is as good as the best: on real speech (real:federated) its rounds 7-10 scored 14.7, 16.3,
    # 14.5, 14.5 % on validation; constant's 13.8, 13.5, 14.7, 13.1 % (best a little lower, within 100 clips' noise)
    lr_schedule: str = "cosine"
    strategy: str = "fedavg"
    server_learning_rate: float = 1.0  # fedavgm: the server's step along the averaged update (1.0 with no momentum = FedAvg)
    server_momentum: float = 0.9  # fedavgm
    fedadam_eta: float = 0.01  # fedadam: the server's Adam step size
    proximal_mu: float = 0.01  # fedprox: weight of the clients' proximal term (mu/2)·||w - w_global||²
    eval_clips: int = 100  # validation clips the server decodes every round (0: all)
    # the served model (validated every round, best/): pretrained + interpolation x the federated update (WiSE-FT); below 1
    # it keeps what the pretrained model knew (measured: the real suite's recipe part); clients train the update as is
    interpolation: float = 0.5
    # clips without a transcript: labelled on the device by the received model, kept when its mean token log-prob is at
    # least this (and the text does not repeat itself); "off" leaves them out. On speechocean762's validation speakers a
    # floor of -0.3 kept 81 % of the clips with labels at 13.5 % WER, the 19 % dropped were at 53 % (-0.5: 95 % kept, at
    # 18.5 %; real:confidence)
    pseudo_labels: str = "on"
    pseudo_min_log_prob: float = -0.3
    # share of each client speaker's clips a device keeps to test its personal model (asr.personal); never trained on
    own_test_share: float = 0.0
    cache_dir: str = ""  # default: $FEDWHISPER_HOME/cache/asr-federated; each client keeps its own sub-folder
    seed: int = 0
    # heterogeneous clients (every algorithm but fedavg): tiers' decoder blocks train, the encoder and embeddings stay frozen
    algorithm: str = "fedavg"
    tiers: str = DEFAULT_TIERS  # device tier:share of the clients (profiles in asr.tiers.DEVICE_TIERS)
    tier_costs: str = ""  # seconds per training sample by decoder layers, "1:0.12,4:0.2"; empty: measured when the run starts
    proxy: str = ""  # prepared features of the server's public proxy corpus (fedkad's distillation, fedmd's public data)
    upper_blocks: int = 1  # fedkad: top decoder blocks a client trains and sends
    init_steps: int = (
        200  # with --proxy: the server distils each smaller tier's model from the teacher for this many batches first
    )
    server_steps: int = (
        10  # fedkad: distillation steps a round on the proxy corpus, into the global model and back into each tier
    )
    kd_learning_rate: float = 5e-4  # fedkad's server distillation and fedmd's digest step
    public_clips: int = 32  # fedmd: public clips whose logits clients share each round
    top_k: int = 10  # fedmd: logits sent per token position (the largest; a full row is 51,865 floats)

    def __post_init__(self):
        for name in (
            "lora_rank",
            "lora_alpha",
            "top_blocks",
            "num_clients",
            "clients_per_round",
            "rounds",
            "local_steps",
            "batch_size",
        ):
            require(getattr(self, name) >= 1, name, "must be at least 1", getattr(self, name))
        require(self.mode in MODES, "mode", f"must be one of {', '.join(MODES)}", self.mode)
        stacks = [stack.strip() for stack in self.lora_stacks.split(",") if stack.strip()]
        require(
            bool(stacks) and set(stacks) <= {"encoder", "decoder"},
            "lora_stacks",
            "must name encoder, decoder or both",
            self.lora_stacks,
        )
        require(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}", self.optimizer)
        require(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}", self.lr_schedule)
        require(self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}", self.strategy)
        for name in ("learning_rate", "server_learning_rate", "fedadam_eta"):
            require(getattr(self, name) > 0, name, "must be positive", getattr(self, name))
        require(0 <= self.server_momentum < 1, "server_momentum", "must be in [0, 1)", self.server_momentum)
        require(self.proximal_mu >= 0, "proximal_mu", "must be 0 or more", self.proximal_mu)
        require(self.eval_clips >= 0, "eval_clips", "must be 0 or more", self.eval_clips)
        require(0 < self.interpolation <= 1, "interpolation", "must be above 0 and at most 1", self.interpolation)
        require(self.pseudo_labels in ("on", "off"), "pseudo_labels", "must be on or off", self.pseudo_labels)
        require(0 <= self.own_test_share < 1, "own_test_share", "must be at least 0 and below 1", self.own_test_share)
        require(self.algorithm in ALGORITHMS, "algorithm", f"must be one of {', '.join(ALGORITHMS)}", self.algorithm)
        require(self.init_steps >= 0, "init_steps", "must be 0 or more", self.init_steps)
        for name in ("upper_blocks", "server_steps", "public_clips", "top_k"):
            require(getattr(self, name) >= 1, name, "must be at least 1", getattr(self, name))
        require(self.kd_learning_rate > 0, "kd_learning_rate", "must be positive", self.kd_learning_rate)
        if self.algorithm != "fedavg":
            parse_tiers(self.tiers)
        require(
            self.clients_per_round <= self.num_clients,
            "clients_per_round",
            f"must be at most --num-clients ({self.num_clients})",
            self.clients_per_round,
        )

    @property
    def features_path(self) -> str:
        """The features' resolved path: the key of the per-process caches below."""
        return str(Path(self.features).resolve())

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else fedwhisper_home() / "cache" / "asr-federated"

    def strategy_options(self) -> dict:
        """The constructor options of Flower's strategy class for ``strategy``."""
        return {
            "fedavg": {},
            "fedavgm": {"server_learning_rate": self.server_learning_rate, "server_momentum": self.server_momentum},
            "fedadam": {"eta": self.fedadam_eta, "eta_l": self.learning_rate},
            "fedprox": {"proximal_mu": self.proximal_mu},
        }[self.strategy]

    def train_config(self, encoder_blocks: int) -> TrainConfig:
        """The fine-tuning settings a client's round uses (constant learning rate: each round is short)."""
        common = dict(
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            warmup_steps=0,
            max_steps=self.local_steps,
            seed=self.seed,
            window=self.window,
        )
        if self.mode == "lora":
            modules = "|".join(m.strip() for m in self.lora_modules.split(",") if m.strip())
            stacks = "|".join(sorted(stack.strip() for stack in self.lora_stacks.split(",") if stack.strip()))
            return TrainConfig(
                mode="lora",
                lora_rank=self.lora_rank,
                lora_alpha=self.lora_alpha,
                lora_targets=rf"model\.({stacks})\.layers\.\d+\.(.*\.)?({modules})",
                **common,
            )
        if self.mode == "encoder-top":
            if self.top_blocks >= encoder_blocks:
                raise FedwhisperError(f"--top-blocks must be below the encoder's {encoder_blocks} blocks (use --mode full)")
            return TrainConfig(mode="encoder-only", frozen_encoder_layers=encoder_blocks - self.top_blocks, **common)
        return TrainConfig(mode="full", **common)


# One base model, one feature set and one partitioner per process: a simulation actor serves many clients in turn.
@functools.cache
def base_model(model: str):
    from fedwhisper.models.registry import load_whisper

    return load_whisper(model)


@functools.cache
def features_of(path: str):
    from fedwhisper.asr.prepare import load_features

    return load_features(path)


@functools.cache
def partitioner(path: str, num_clients: int, seed: int):
    from fedwhisper.data.partition import speaker_partitioner

    dataset, _ = features_of(path)
    return speaker_partitioner(dataset["train"], num_clients, seed)


def check(options: AsrFederationOptions) -> None:
    """Fail before any work: the features, clients vs speakers, the model and its tokenizer, the mode."""
    if not options.features:
        raise FedwhisperError("no features given (prepare them with `fedwhisper asr prepare`)")
    dataset, manifest = features_of(options.features_path)
    if "train" not in dataset or "speaker_id" not in dataset["train"].column_names:
        raise FedwhisperError(f"{options.features}: no train split with speakers to give the clients")
    partitioner(options.features_path, options.num_clients, options.seed)
    whisper, processor = base_model(options.model)
    if len(processor.tokenizer) != manifest["vocab_size"]:
        raise FedwhisperError(
            f"{options.features} was prepared with another tokenizer ({manifest['model']}); prepare it again for {options.model}"
        )
    options.train_config(len(whisper.model.encoder.layers))


def client_train_config(options: AsrFederationOptions) -> TrainConfig:
    """The training settings of every client's round, with the language and task the features were prepared for."""
    whisper, _ = base_model(options.model)
    _, manifest = features_of(options.features_path)
    return replace(
        options.train_config(len(whisper.model.encoder.layers)),
        language=manifest["options"]["language"],
        task=manifest["options"]["task"],
    )


def model_to_train(options: AsrFederationOptions):
    """A copy of the base model with the run's mode applied (adapters initialised from the run's seed)."""
    whisper, _ = base_model(options.model)
    config = client_train_config(options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = apply_mode(copy.deepcopy(whisper), config)
    if options.mode == "lora" and options.lora_freeze_a:
        for name, parameter in model.named_parameters():
            if "lora_A" in name:
                parameter.requires_grad_(False)
    return model, config


def initial_state(options: AsrFederationOptions) -> dict[str, torch.Tensor]:
    model, _ = model_to_train(options)
    return trainable_state(model)


def served_state(options: AsrFederationOptions, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trainable tensors of the model a device serves: pretrained + ``interpolation`` x the federated update
    (WiSE-FT, Wortsman et al. 2022). With LoRA the update is B·A, so scaling B scales it exactly."""
    alpha = options.interpolation
    if alpha == 1:
        return state
    if options.mode == "lora":
        return {key: value * alpha if "lora_B" in key else value for key, value in state.items()}
    start = initial_state(options)
    return {key: start[key] + alpha * (value - start[key]) for key, value in state.items()}


def client_shard(options: AsrFederationOptions, partition_id: int):
    return partitioner(options.features_path, options.num_clients, options.seed).load_partition(partition_id)


def client_update(
    options: AsrFederationOptions, partition_id: int, state: dict[str, torch.Tensor], round_number: int, shard=None
) -> tuple[dict | None, dict]:
    """One client's round: ``local_steps`` optimizer steps on its own clips, continuing its data order across rounds.

    ``shard`` is the client's own prepared split (deployment); by default its simulation partition. Returns (trained
    tensors or None when the client cannot train or its loss is not finite, metrics)."""
    started = time.perf_counter()
    model, config = model_to_train(options)
    load_trainable_state(model, state)
    return local_training(model, config, options, partition_id, round_number, shard, started, proximal_term(model, options))


def local_training(
    model,
    config: TrainConfig,
    options: AsrFederationOptions,
    partition_id: int,
    round_number: int,
    shard=None,
    started: float | None = None,
    extra_loss=None,
    loss_fn=None,
) -> tuple[dict | None, dict]:
    """``local_steps`` steps of ``model`` (what it trains already set) on the client's clips, seeded by client and
    round, with ``train_on_batches``' ``extra_loss`` / ``loss_fn``; (its trainable tensors, or None when the shard is
    smaller than a batch or the loss is not finite; metrics)."""
    started = time.perf_counter() if started is None else started
    shard, labelling = training_rows(model, config, options, client_shard(options, partition_id) if shard is None else shard)
    if len(shard) < options.batch_size:
        log.warning(
            "client %d: %d clips, fewer than a batch of %d; it does not train", partition_id, len(shard), options.batch_size
        )
        return None, {"num-examples": 0} | labelling
    batches = batches_for(model, shard, config, options.cache_root / f"client-{partition_id}", progress=False)
    first = (round_number - 1) * options.local_steps
    with torch.random.fork_rng(devices=[]):  # dropout in the adapters: the same round gives the same update
        torch.manual_seed(options.seed * 1_000_003 + round_number * 1_009 + partition_id)
        result = train_on_batches(
            model,
            batches.micro_batches(options.batch_size, options.seed + partition_id, first, options.local_steps),
            config,
            client_optimizer(model, options, round_number),
            extra_loss=extra_loss,
            loss_fn=loss_fn,
        )
    if not math.isfinite(result["loss"]):
        log.warning("client %d, round %d: loss is %s; the update is withheld", partition_id, round_number, result["loss"])
        return None, {"num-examples": 0, "rejected-nan": 1}
    return trainable_state(model), labelling | {
        "num-examples": result["samples"],
        "train_loss": result["loss"],
        "train-seconds": result["seconds"],
        "samples-per-second": result["samples"] / result["seconds"],
        "round-seconds": time.perf_counter() - started,
    }


def training_rows(model, config: TrainConfig, options: AsrFederationOptions, shard) -> tuple[object, dict]:
    """The clips a client trains on this round, and what it did to them: its own test clips set aside (personalisation),
    clips without a transcript pseudo-labelled by ``model`` (or left out), the rest as they are."""
    import datasets

    from fedwhisper.asr.personal import own_split
    from fedwhisper.asr.pseudo import pseudo_label, untranscribed

    if options.own_test_share:
        shard = own_split(shard, options.own_test_share, options.seed)[0]
    missing = set(untranscribed(shard))
    if not missing:
        return shard, {}
    labelled = shard.select([i for i in range(len(shard)) if i not in missing])
    if options.pseudo_labels == "off":
        return labelled, {"pseudo-candidates": len(missing), "pseudo-labelled": 0}
    # on the training window: labels on 30-s windows kept more of the first round's clips (68 vs 32 of 260) but trained
    # a worse model (held-out 29.3 vs 27.9 %, real:unlabelled)
    pseudo, metrics = pseudo_label(
        model,
        base_model(options.model)[1].tokenizer,
        shard.select(sorted(missing)),
        config.window,
        decoding_options(model, config),
        features_of(options.features_path)[1],
        options.pseudo_min_log_prob,
    )
    return datasets.concatenate_datasets([labelled, pseudo.cast(labelled.features)]), metrics


def round_learning_rate(options: AsrFederationOptions, round_number: int) -> float:
    """The clients' learning rate in ``round_number`` (from 1): constant, or cosine from ``learning_rate`` in the first
    round to a tenth of it in the last. A function of the round alone, so a resumed run trains as an unbroken one."""
    if options.lr_schedule == "constant":
        return options.learning_rate
    low, progress = options.learning_rate / 10, (round_number - 1) / max(options.rounds - 1, 1)
    return low + 0.5 * (options.learning_rate - low) * (1 + math.cos(math.pi * progress))


def client_optimizer(model, options: AsrFederationOptions, round_number: int = 1) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = round_learning_rate(options, round_number)
    if options.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=0.9)
    return torch.optim.AdamW(trainable, lr=lr)


def proximal_term(model, options: AsrFederationOptions):
    """FedProx's client-side term (mu/2)·||w - w_global||² over the trainable tensors, or None for other strategies."""
    if options.strategy != "fedprox" or options.proximal_mu == 0:
        return None
    trainable = [p for p in model.parameters() if p.requires_grad]
    received = [p.detach().clone() for p in trainable]

    def term() -> torch.Tensor:
        return options.proximal_mu / 2 * sum(((p - g) ** 2).sum() for p, g in zip(trainable, received))

    return term


class ServerEvaluator:
    """WER/CER and loss of the served global model (``served_state``) on the first ``eval_clips`` validation clips
    (speakers no client holds)."""

    def __init__(self, options: AsrFederationOptions):
        dataset, _ = features_of(options.features_path)
        split = "validation" if "validation" in dataset else "test"
        rows = dataset[split]
        if options.eval_clips:
            rows = rows.select(range(min(options.eval_clips, len(rows))))
        if not len(rows):
            raise FedwhisperError(f"{options.features}: no {split} clips to evaluate on")
        self.options = options
        self.model, config = model_to_train(options)
        self.processor = base_model(options.model)[1]
        self.split = split
        self.window = config.window
        self.batches: AsrBatches = batches_for(self.model, rows, config, options.cache_root / "server", progress=False)
        self.decoding = decoding_options(self.model, config)

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        from fedwhisper.asr.evaluate import evaluate_batches

        load_trainable_state(self.model, served_state(self.options, state))
        result = evaluate_batches(self.model, self.processor.tokenizer, self.batches, self.decoding)
        return {"wer": result["wer"], "cer": result["cer"], "eval_loss": result["loss"]}

    def save_model(self, path: Path) -> None:
        save_plain_model(self.model, self.processor, path, self.window)


def full_model_bytes(options: AsrFederationOptions) -> int:
    """What sending the whole model would weigh: the yardstick for the adapters' bytes."""
    whisper, _ = base_model(options.model)
    return sum(p.numel() * p.element_size() for p in whisper.parameters())


def test_best(options: AsrFederationOptions, run) -> dict:
    """The best round's model (``RUN/best``) on every held-out test clip, with the run's encoder window; kept in
    ``RUN/test.json``."""
    import json

    from fedwhisper.asr.evaluate import evaluate_data

    dataset, _ = features_of(options.features_path)
    best = min((row for row in run.rows if "wer" in row), key=lambda row: row["wer"])
    result = {"round": best["round"], "validation_wer": best["wer"], "window": options.window}
    if "test" in dataset and len(dataset["test"]):
        tested = evaluate_data(
            options.features, str(run.path / "best"), "test", progress=True, window=options.window
        )  # minutes: shown
        result |= {key: tested[key] for key in ("wer", "cer", "clips")}
        log.info("best round %d: test WER %.2f%% over %d held-out clips", best["round"], 100 * tested["wer"], tested["clips"])
    (run.path / "test.json").write_text(json.dumps(result, indent=2))
    return result


def plot_wer(rows: list[dict], path: Path) -> None:
    """WER and CER of the global model on the validation speakers, per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for key, label in (("wer", "WER"), ("cer", "CER")):
        axis.plot([row["round"] for row in rows], [100 * row[key] for row in rows], marker="o", label=label)
    axis.set(xlabel="round", ylabel="% on held-out validation speakers", title="Federated ASR")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
