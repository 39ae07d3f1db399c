"""Heterogeneous federated ASR as plain functions: device tiers with models of their own (``asr.tiers``), four
algorithms over the same clients, data and evaluation (the Flower glue is ``fl.hetero_app``):

- ``fedavg-uniform``: every client trains the weakest tier's model, FedAvg over all;
- ``fedavg-large``: only clients whose device can hold and train the full-size model in time take part;
- ``fedkad``: each tier trains the top decoder blocks of its own model, a deeper tier also as the weakest tier's
  sub-network of its model (depth-nested), so the server can average the top blocks across every tier; it then distils
  the tiers into the global model and the global model back into each tier's own lower blocks on its public proxy
  corpus (``docs/FEDKAD.md``);
- ``fedmd`` (Li & Wang 2019): clients keep their own tier models; each round they send top-k logits on a public
  sample, the server averages them into a consensus, clients digest it and revisit their own data.

What trains is the decoder's blocks and final norm: the encoder (the generic lower part) and the token embeddings
(tied to the output projection) stay the teacher's, so every tier's encoder and top-level feature maps are the same.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fedwhisper.asr.batches import AsrBatches, model_inputs
from fedwhisper.asr.federated import (
    AsrFederationOptions,
    base_model,
    client_shard,
    client_train_config,
    features_of,
    local_training,
)
from fedwhisper.asr.run import load_trainable_state, save_plain_model, trainable_state
from fedwhisper.asr.tiers import (
    DEVICE_TIERS,
    assign_tiers,
    decoder_layers,
    measure_cost,
    ordered_tiers,
    simulated_seconds,
    tier_model_dir,
    training_memory_mb,
)
from fedwhisper.constants import IGNORE_INDEX
from fedwhisper.distill import DistillLoss, distillation_loss, layer_map
from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.strategy import WEIGHT, Assignment, round_seed

log = logging.getLogger("fedwhisper.asr")
HETERO = ("fedkad", "fedmd", "fedavg-uniform", "fedavg-large")
CONSENSUS = ("topk-ids", "topk-logprobs")  # fedmd's arrays, both ways
_BLOCK = re.compile(r"model\.decoder\.layers\.(\d+)\.")


# --- models -------------------------------------------------------------------------------------------------------


def teacher_layers(options: AsrFederationOptions) -> int:
    return base_model(options.model)[0].config.decoder_layers


def group_of(options: AsrFederationOptions, tier: str) -> str:
    """The arrays a tier's clients get: their tier's (fedkad), the one shared model's, or the consensus (fedmd)."""
    return {"fedkad": tier, "fedmd": "consensus", "fedavg-uniform": "uniform", "fedavg-large": "large"}[options.algorithm]


def model_layers(options: AsrFederationOptions, tier: str) -> int:
    """Decoder layers of the model a client of ``tier`` trains under the run's algorithm."""
    if options.algorithm == "fedavg-large":
        return teacher_layers(options)
    if options.algorithm == "fedavg-uniform":
        tier = ordered_tiers(options.tiers)[0]
    return decoder_layers(tier, teacher_layers(options))


@functools.cache
def _template(path: str):
    from fedwhisper.models.registry import load_whisper

    return load_whisper(path)[0]


def new_model(options: AsrFederationOptions, layers: int, upper: int | None = None):
    """The teacher with ``layers`` decoder layers (made once in the cache); its top ``upper`` decoder blocks (all by
    default) and the decoder's final norm train."""
    whisper = copy.deepcopy(_template(str(tier_model_dir(options.model, layers, options.cache_root / "tiers"))))
    whisper.requires_grad_(False)
    blocks = whisper.model.decoder.layers
    for block in blocks[len(blocks) - min(upper or len(blocks), len(blocks)) :]:
        block.requires_grad_(True)
    whisper.model.decoder.layer_norm.requires_grad_(True)
    return whisper


def sub_network(options: AsrFederationOptions, model):
    """The weakest tier's model inside a deeper tier's ``model``: the same block modules (gradients reach them) at
    the evenly spaced places the student initialisation would keep, top block last, the others skipped; the same
    final norm."""
    weakest = model_layers(options, ordered_tiers(options.tiers)[0])
    view = new_model(options, weakest)
    blocks = model.model.decoder.layers
    view.model.decoder.layers = torch.nn.ModuleList(blocks[i] for i in layer_map(len(blocks), weakest))
    view.model.decoder.layer_norm = model.model.decoder.layer_norm
    return view


def nested_loss(options: AsrFederationOptions, model):
    """fedkad's client loss for a tier deeper than the weakest: cross-entropy of its model plus that of its weakest-tier
    sub-network, so the top block it sends works over its own stack and in the weakest tier's model."""
    view = sub_network(options, model)

    def loss_fn(whisper, inputs: dict) -> torch.Tensor:
        return whisper(**inputs).loss + view(**inputs, use_cache=False).loss

    return loss_fn


def is_nested(options: AsrFederationOptions, layers: int) -> bool:
    return options.algorithm == "fedkad" and layers > model_layers(options, ordered_tiers(options.tiers)[0])


def train_config(options: AsrFederationOptions):
    return replace(client_train_config(options), mode="decoder-only")


def prefixed(group: str, state: dict) -> dict:
    return {f"{group}/{key}": value for key, value in state.items()}


def group_state(state: dict, group: str) -> dict:
    return {key[len(group) + 1 :]: value for key, value in state.items() if key.startswith(group + "/")}


def groups(options: AsrFederationOptions) -> list[str]:
    """The server's models: each tier's (fedkad, weakest first, the global model last), the shared one, or none."""
    if options.algorithm == "fedkad":
        return ordered_tiers(options.tiers)
    return {"fedavg-uniform": ["uniform"], "fedavg-large": ["large"], "fedmd": []}[options.algorithm]


def group_layers(options: AsrFederationOptions, group: str) -> int:
    return model_layers(options, group if group in DEVICE_TIERS else ordered_tiers(options.tiers)[0])


def initial_state(options: AsrFederationOptions) -> dict[str, torch.Tensor]:
    if options.algorithm == "fedmd":  # no consensus before the first round
        return {
            "consensus/topk-ids": torch.zeros(0, options.top_k, dtype=torch.int64),
            "consensus/topk-logprobs": torch.zeros(0, options.top_k),
        }
    state = {k: v for g in groups(options) for k, v in prefixed(g, initial_tier_state(options, group_layers(options, g))).items()}
    return shared_top(options, state) if options.algorithm == "fedkad" else state


# --- a client's round ------------------------------------------------------------------------------------------------


def client_round(options: AsrFederationOptions, partition_id: int, tier: str, state: dict, round_number: int, shard=None):
    """One client's round under the run's algorithm: (arrays to send or None, metrics)."""
    started = time.perf_counter()
    if options.algorithm == "fedmd":
        return fedmd_round(options, partition_id, tier, state, round_number, shard, started)
    upper = options.upper_blocks if options.algorithm == "fedkad" else None
    layers = model_layers(options, tier)
    model = new_model(options, layers, upper)
    load_trainable_state(model, state)
    loss_fn = nested_loss(options, model) if is_nested(options, layers) else None
    return local_training(model, train_config(options), options, partition_id, round_number, shard, started, loss_fn=loss_fn)


def fedmd_round(
    options: AsrFederationOptions, partition_id: int, tier: str, consensus: dict, round_number: int, shard, started: float
):
    """Digest the consensus on the public sample, revisit the client's own clips, keep the model on the device, send
    the new model's top-k logits on this round's public sample, and report its WER on the validation clips."""
    from safetensors.torch import load_file

    model = new_model(options, model_layers(options, tier))
    home = options.cache_root / f"fedmd-client-{partition_id}"
    saved = sorted(p for p in home.glob("round-*.safetensors") if int(p.stem.split("-")[1]) < round_number)
    load_trainable_state(model, load_file(str(saved[-1])) if saved else initial_tier_state(options, model_layers(options, tier)))
    if len(consensus["topk-ids"]):  # the consensus is on the previous round's public sample
        digest(model, public_batches(options, model, round_number - 1), consensus, options)
    new_state, metrics = local_training(model, train_config(options), options, partition_id, round_number, shard, started)
    if new_state is None:
        return None, metrics
    from safetensors.torch import save_file

    from fedwhisper.files import atomic_path

    with atomic_path(home / f"round-{round_number:03d}.safetensors") as partial:
        save_file({k: v.contiguous() for k, v in new_state.items()}, str(partial))
    ids, logprobs = top_logits(model, public_batches(options, model, round_number), options.top_k)
    return {"topk-ids": ids, "topk-logprobs": logprobs}, metrics | {"wer": validation_wer(options, model)}


def public_batches(options: AsrFederationOptions, model, round_number: int) -> list[dict]:
    """This round's public sample (the same on every client and the server: drawn from the run's seed), as decoder
    inputs over the shared encoder's outputs."""
    dataset = features_of(str(Path(options.proxy).resolve()))[0]["train"]
    rng = np.random.default_rng(round_seed(options.seed, round_number, "public"))
    rows = dataset.select(sorted(rng.choice(len(dataset), min(options.public_clips, len(dataset)), replace=False).tolist()))
    batches = AsrBatches(rows, model.config.decoder_start_token_id, window=options.window)
    return [encoded(model, batch) for _, batch in batches.in_order(options.batch_size)]


def encoded(model, batch: dict) -> dict:
    """Decoder inputs of a batch: the (frozen, shared) encoder's outputs and the labels. Computed without a graph, not
    in inference mode: the decoder's cross-attention trains on them."""
    with torch.no_grad():
        inputs = model_inputs(model, batch)
        if "input_features" in inputs:  # 30-s windows
            inputs["encoder_outputs"] = (model.get_encoder()(inputs.pop("input_features")).last_hidden_state,)
    return {"encoder_outputs": inputs["encoder_outputs"], "labels": inputs["labels"]}


def top_logits(model, batches: list[dict], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's k most likely tokens and their log-probabilities at every label position of the batches, in order."""
    ids, values = [], []
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            logprobs = torch.log_softmax(model(**batch).logits.float(), dim=-1)[batch["labels"] != IGNORE_INDEX]
            top = logprobs.topk(k, dim=-1)
            ids.append(top.indices)
            values.append(top.values)
    return torch.cat(ids), torch.cat(values)


def consensus_of(replies: list[dict], weights: list[float], vocab: int, k: int) -> dict[str, torch.Tensor]:
    """FedMD's consensus: the clients' (top-k) distributions averaged, position by position, and its top k renormalised."""
    positions = replies[0]["topk-ids"].shape[0]
    mean = torch.zeros(positions, vocab)
    for reply, weight in zip(replies, weights):
        mean.scatter_add_(1, reply["topk-ids"].long(), weight / sum(weights) * reply["topk-logprobs"].exp())
    top = mean.topk(k, dim=-1)
    return {"topk-ids": top.indices, "topk-logprobs": torch.log(top.values / top.values.sum(-1, keepdim=True))}


def trainable_optimizer(model, learning_rate: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)


def digest(model, batches: list[dict], consensus: dict, options: AsrFederationOptions) -> None:
    """One pass over the public sample: cross-entropy of the model against the consensus distribution."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = trainable_optimizer(model, options.kd_learning_rate)
    model.train()
    first = 0
    for batch in batches:
        mask = batch["labels"] != IGNORE_INDEX
        count = int(mask.sum())
        ids, logprobs = (consensus[name][first : first + count] for name in CONSENSUS)
        first += count
        student = torch.log_softmax(model(**batch).logits.float()[mask], dim=-1)
        loss = -(logprobs.exp() * student.gather(1, ids.long())).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def evaluate_model(options: AsrFederationOptions, model, rows) -> dict:
    """``evaluate_batches`` of a tier model on prepared ``rows``, with the run's window and decoding settings."""
    from fedwhisper.asr.evaluate import evaluate_batches
    from fedwhisper.asr.train import decoding_options

    batches = AsrBatches(rows, model.config.decoder_start_token_id, window=options.window)
    return evaluate_batches(
        model, base_model(options.model)[1].tokenizer, batches, decoding_options(model, train_config(options))
    )


def validation_wer(options: AsrFederationOptions, model) -> float:
    """WER of a model on the first ``eval_clips`` validation clips (fedmd: each client's own model)."""
    return float(evaluate_model(options, model, evaluation_rows(options))["wer"])


def evaluation_rows(options: AsrFederationOptions, split: str = "validation"):
    dataset = features_of(options.features_path)[0]
    rows = dataset[split if split in dataset else "test"]
    return rows.select(range(min(options.eval_clips, len(rows)))) if options.eval_clips and split == "validation" else rows


# --- the server ------------------------------------------------------------------------------------------------------


def client_index(client: str) -> int:
    """A simulation client's partition (its name ends with it); deployment nodes name theirs the same way."""
    found = re.search(r"(\d+)$", client)
    if not found:
        raise FedwhisperError(f"client {client!r}: a heterogeneous federation needs clients named by partition (…-N)")
    return int(found.group(1))


def weighted_mean(states: list[dict], weights: list[float]) -> dict[str, torch.Tensor]:
    total = sum(weights)
    return {key: sum(w / total * s[key].float() for s, w in zip(states, weights)).to(states[0][key].dtype) for key in states[0]}


class TierPlan:
    """The server's side of a heterogeneous federation (``fl.strategy.GroupPlan``): each client's tier, eligibility,
    simulated round time, the replies it expects and how they are aggregated (fedkad's distillation included)."""

    def __init__(self, options: AsrFederationOptions, costs: dict[int, float]):
        self.options = options
        self.tiers = assign_tiers(options.num_clients, options.tiers, options.seed)
        self.costs = costs
        self.memory_mb = {
            tier: training_memory_mb(new_model(options, model_layers(options, tier), self._upper())) for tier in set(self.tiers)
        }
        self.samples = options.local_steps * options.batch_size + (options.public_clips if options.algorithm == "fedmd" else 0)
        self.distiller = ServerDistillation(options) if options.algorithm == "fedkad" else None

    def _upper(self) -> int | None:
        return self.options.upper_blocks if self.options.algorithm == "fedkad" else None

    def tier_of(self, client: str) -> str:
        return self.tiers[client_index(client) % len(self.tiers)]

    def nominal_seconds(self, tier: str) -> float:
        return self.costs[model_layers(self.options, tier)] * self.samples / DEVICE_TIERS[tier].compute_factor

    def can_train(self, tier: str) -> bool:
        """The tier's device holds its model's training state and finishes an unslowed round before its deadline."""
        profile = DEVICE_TIERS[tier]
        return self.memory_mb[tier] <= profile.memory_mb and self.nominal_seconds(tier) <= profile.deadline_seconds

    def eligible(self, client: str) -> bool:
        return self.options.algorithm != "fedavg-large" or self.can_train(self.tier_of(client))

    def assign(self, client: str, round_number: int) -> Assignment:
        tier = self.tier_of(client)
        seconds = simulated_seconds(
            tier, self.costs[model_layers(self.options, tier)], self.samples, self.options.seed, round_number, client
        )
        return Assignment(group_of(self.options, tier), {"tier": tier}, tier, seconds, DEVICE_TIERS[tier].deadline_seconds)

    def reply_keys(self, assignment: Assignment, sent: set[str]) -> set[str]:
        if self.options.algorithm == "fedmd":
            return set(CONSENSUS)
        if self.options.algorithm == "fedkad":
            return uploaded_keys(self.options, assignment.tier, sent)
        return sent

    def aggregate(self, round_number: int, replies: list, state: dict) -> dict:
        weights = [float(metrics[WEIGHT]) for _, _, _, metrics in replies]
        if self.options.algorithm == "fedmd":
            vocab = base_model(self.options.model)[0].config.vocab_size
            return prefixed(
                "consensus", consensus_of([arrays for _, _, arrays, _ in replies], weights, vocab, self.options.top_k)
            )
        if self.options.algorithm != "fedkad":
            group = replies[0][1].group
            return state | prefixed(group, weighted_mean([arrays for _, _, arrays, _ in replies], weights))
        return self.distiller(round_number, self._fedkad_average(replies, weights, dict(state)))

    def _fedkad_average(self, replies: list, weights: list[float], state: dict) -> dict:
        """Within each tier, the weighted mean of its clients' top blocks; then each top block and the final norm across
        the tiers that trained it this round, by teacher layer, weighted by the examples behind each tier's mean, and
        copied into every tier that sends it. Averaging a block across tiers is sound because every deeper client
        trained it over its own stack and in the weakest tier's sub-network (``nested_loss``); without that it would mix
        two functions."""
        by_tier: dict[str, tuple[list, list]] = {}
        for (_, assignment, arrays, _), weight in zip(replies, weights):
            by_tier.setdefault(assignment.tier, ([], []))
            by_tier[assignment.tier][0].append(arrays)
            by_tier[assignment.tier][1].append(weight)
        origins: dict[str, list[tuple[torch.Tensor, float]]] = {}  # teacher layer + parameter -> (tier mean, examples)
        for tier, (states, tier_weights) in by_tier.items():
            for key, value in weighted_mean(states, tier_weights).items():
                origins.setdefault(origin(self.options, tier, key), []).append((value, sum(tier_weights)))
        for tier in groups(self.options):
            for key in uploaded_keys(self.options, tier, group_state(state, tier)):
                if shared := origins.get(origin(self.options, tier, key)):
                    total = sum(w for _, w in shared)
                    state[f"{tier}/{key}"] = sum(w / total * v for v, w in shared)
        return state


def uploaded_keys(options: AsrFederationOptions, tier: str, keys) -> set[str]:
    """What a fedkad client of ``tier`` trains and sends: its model's top ``upper_blocks`` blocks and final norm."""
    top = model_layers(options, tier) - options.upper_blocks
    return {k for k in keys if not (m := _BLOCK.match(k)) or int(m.group(1)) >= top}


def origin(options: AsrFederationOptions, tier: str, key: str) -> str:
    """Where a decoder parameter of ``tier``'s model sits: the teacher layer of its block and its name within the block
    (the final norm is the same in every tier)."""
    found = _BLOCK.match(key)
    if not found:
        return key
    return f"{layer_map(teacher_layers(options), model_layers(options, tier))[int(found.group(1))]}/{key[found.end() :]}"


def shared_top(options: AsrFederationOptions, state: dict) -> dict:
    """The server state with every tier's uploaded blocks and final norm set from the weakest tier holding the same
    teacher layer: fedkad's tiers share them from the start (the weakest tier's, distilled to work alone)."""
    shared = dict(state)
    for tier in reversed(groups(options)):  # the weakest last, so its blocks win
        own = group_state(state, tier)
        places = {origin(options, tier, key): own[key] for key in uploaded_keys(options, tier, own)}
        for other in groups(options):
            for key in uploaded_keys(options, other, group_state(state, other)):
                if (value := places.get(origin(options, other, key))) is not None:
                    shared[f"{other}/{key}"] = value
    return shared


class ProxyBatches:
    """The server's public proxy corpus as decoder inputs: batch ``k`` of its seeded order, the shared encoder's
    outputs computed once and kept."""

    def __init__(self, options: AsrFederationOptions, model):
        self.options, self.model = options, model
        dataset = features_of(str(Path(options.proxy).resolve()))[0]["train"]
        self.batches = AsrBatches(dataset, model.config.decoder_start_token_id, window=options.window)
        self._encoded: dict[int, dict] = {}

    def __getitem__(self, k: int) -> dict:
        k %= self.batches.batches_per_epoch(self.options.batch_size)
        if k not in self._encoded:
            self._encoded[k] = encoded(
                self.model, next(self.batches.micro_batches(self.options.batch_size, self.options.seed, k, 1))
            )
        return self._encoded[k]


def distil(student, teachers: list, batches: list[dict], optimizer: torch.optim.Optimizer) -> None:
    """``student``'s trainable part on ``batches`` with the distillation loss (0.8·CE + KL·T², T = 2) against, for each
    utterance, the teacher that predicts its transcript best (lowest cross-entropy): a weak tier's model never teaches
    what a stronger one knows better."""
    loss_weights = DistillLoss()
    trainable = [p for p in student.parameters() if p.requires_grad]
    for batch in batches:
        labels = batch["labels"]
        with torch.no_grad():
            for teacher in teachers:
                teacher.eval()
            logits = torch.stack([teacher(**batch).logits.float() for teacher in teachers])  # [teachers, batch, tokens, vocab]
            token_loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).transpose(1, 2), labels.repeat(len(teachers), 1), ignore_index=IGNORE_INDEX, reduction="none"
            ).view(len(teachers), *labels.shape)
            best = (token_loss.sum(-1) / (labels != IGNORE_INDEX).sum(-1).clamp_min(1)).argmin(0)  # per utterance
            chosen = logits[best, torch.arange(labels.shape[0])]
        student.train()
        loss = distillation_loss(student(**batch).logits, chosen, labels, loss_weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


class ServerDistillation:
    """fedkad's server step on the public proxy corpus (labelled, voices and sentences no client has): the global
    model (the strongest tier's) learns from the tiers' models, then every other tier from the global model,
    ``server_steps`` batches each (``distil``). Only each tier's own lower blocks learn here: the top blocks and final
    norm are shared by the tiers and averaged from the clients' updates. Each model keeps its AdamW state from round to
    round (the server is one long process; a resumed run starts them afresh)."""

    def __init__(self, options: AsrFederationOptions):
        self.options = options
        self.tiers = groups(options)
        self.models = {tier: new_model(options, model_layers(options, tier)) for tier in self.tiers}
        for tier, model in self.models.items():
            parameters = dict(model.named_parameters())
            for name in uploaded_keys(options, tier, parameters):
                parameters[name].requires_grad_(False)
        self.optimizers = {
            tier: trainable_optimizer(model, options.kd_learning_rate)
            for tier, model in self.models.items()
            if any(p.requires_grad for p in model.parameters())
        }
        self.proxy = ProxyBatches(options, self.models[self.tiers[0]])

    def __call__(self, round_number: int, state: dict) -> dict:
        for tier, model in self.models.items():
            load_trainable_state(model, group_state(state, tier))
        first = (round_number - 1) * self.options.server_steps
        steps = [self.proxy[first + i] for i in range(self.options.server_steps)]
        *others, top = self.tiers
        learners = [(top, [self.models[t] for t in self.tiers])] + [(tier, [self.models[top]]) for tier in others]
        for tier, teachers in learners:
            if tier in self.optimizers:
                distil(self.models[tier], teachers, steps, self.optimizers[tier])
        return state | {k: v for tier in self.optimizers for k, v in prefixed(tier, trainable_state(self.models[tier])).items()}


def initial_tier_state(options: AsrFederationOptions, layers: int) -> dict[str, torch.Tensor]:
    """A tier model's starting decoder: with a proxy corpus, the student distilled from the teacher on it for
    ``init_steps`` batches (Distil-Whisper's recipe, on the server, once; every algorithm starts from it), else the
    student as initialised. Kept in the cache beside the tier's model."""
    from safetensors.torch import load_file, save_file

    from fedwhisper.files import atomic_path

    model = new_model(options, layers)
    if not options.proxy or layers == teacher_layers(options) or not options.init_steps:
        return trainable_state(model)
    proxy = Path(options.proxy).resolve()
    path = (
        options.cache_root
        / "tiers"
        / f"{Path(options.model).name}-decoder{layers}-init{options.init_steps}-{_digest(str(proxy), options.seed)}.safetensors"
    )
    if not path.is_file():
        teacher = new_model(options, teacher_layers(options))
        batches = ProxyBatches(options, teacher)
        distil(
            model,
            [teacher],
            [batches[k] for k in range(options.init_steps)],
            trainable_optimizer(model, options.kd_learning_rate),
        )
        with atomic_path(path) as partial:
            save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(partial))
    return load_file(str(path))


def _digest(*parts) -> str:
    import hashlib

    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:10]


class TierEvaluator:
    """WER of each of the server's models on the first ``eval_clips`` validation clips: ``wer/TIER`` for every tier
    that has a model to run, and ``wer`` for the global one (fedkad: the strongest tier's). fedmd has none: its tiers'
    WER is the mean its clients report."""

    def __init__(self, options: AsrFederationOptions, plan: TierPlan):
        self.options = options
        self.plan = plan
        self.models = {group: new_model(options, group_layers(options, group)) for group in groups(options)}
        self.rows = evaluation_rows(options)

    def tiers_of(self, group: str) -> list[str]:
        tiers = ordered_tiers(self.options.tiers)
        if self.options.algorithm == "fedkad":
            return [group]
        return [t for t in tiers if self.options.algorithm != "fedavg-large" or self.plan.can_train(t)]

    def __call__(self, state: dict) -> dict:
        metrics = {}
        for group, model in self.models.items():
            load_trainable_state(model, group_state(state, group))
            result = evaluate_model(self.options, model, self.rows)
            metrics |= {f"wer/{tier}": result["wer"] for tier in self.tiers_of(group)} | {"wer": result["wer"]}
        return metrics

    def save_models(self, state: dict, out: Path) -> None:
        """Each server model as a plain transformers directory, ``out/GROUP``."""
        processor = base_model(self.options.model)[1]
        for group, model in self.models.items():
            load_trainable_state(model, group_state(state, group))
            save_plain_model(model, processor, out / group, self.options.window)


def round_row(stats: dict, plan: TierPlan) -> dict:
    """A round's record beyond WER: per tier, bytes down and up and simulated seconds per client, stragglers dropped;
    the simulated round time; fedmd's per-tier WER from its clients' reports."""
    row = {
        "simulated_round_seconds": stats["simulated_round_seconds"],
        "stragglers": stats["stragglers"],
        "client_tiers": stats["client_tiers"],
    }
    for tier in ordered_tiers(plan.options.tiers):
        index = [i for i, t in enumerate(stats["client_tiers"]) if t == tier]
        row[f"bytes_up/{tier}"] = [stats["bytes_up"][i] for i in index]
        row[f"bytes_down/{tier}"] = [stats["bytes_down_per_client"][i] for i in index]
        row[f"simulated_seconds/{tier}"] = [stats["client_simulated_seconds"][i] for i in index]
        row[f"stragglers/{tier}"] = sum(s["tier"] == tier for s in stats["stragglers"])
        reported = [stats["replied_metrics"][i]["wer"] for i in index if stats["replied_metrics"][i].get(WEIGHT, 0) > 0]
        if plan.options.algorithm == "fedmd" and reported:
            row[f"wer/{tier}"] = float(np.mean(reported))
    clients = stats["client_metrics"]
    if clients:
        samples = sum(m[WEIGHT] for m in clients)
        row["train_loss"] = sum(m["train_loss"] * m[WEIGHT] for m in clients) / samples
    return row


def measure_costs(options: AsrFederationOptions) -> dict[int, float]:
    """Seconds per training sample on this machine of each model the run's clients train (with fedkad's nested loss),
    on client 0's clips."""
    from fedwhisper.asr.train import batches_for

    upper = options.upper_blocks if options.algorithm == "fedkad" else None
    shard = client_shard(options, 0)
    costs = {}
    for layers in sorted({model_layers(options, tier) for tier in ordered_tiers(options.tiers)}):
        model = new_model(options, layers, upper)
        batches = batches_for(model, shard, train_config(options), options.cache_root / "costs", progress=False)
        config = replace(train_config(options), batch_size=min(options.batch_size, len(shard)))
        costs[layers] = measure_cost(
            model, batches, config, loss_fn=nested_loss(options, model) if is_nested(options, layers) else None
        )
    return costs


def parse_costs(spec: str) -> dict[int, float]:
    try:
        return {int(k): float(v) for k, v in (item.split(":") for item in spec.split(",") if item.strip())}
    except ValueError:
        raise FedwhisperError(f"--tier-costs must be LAYERS:SECONDS,… (got {spec!r})") from None


def costs_for(options: AsrFederationOptions, run_dir: Path) -> dict[int, float]:
    """The per-sample costs: given, kept from the run's start (resume), or measured now and kept."""
    if options.tier_costs:
        return parse_costs(options.tier_costs)
    path = run_dir / "tier_costs.json"
    if path.is_file():
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    costs = measure_costs(options)
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(costs))
    log.info("training cost per sample on this machine: %s", ", ".join(f"{k} decoder layers {v:.3f} s" for k, v in costs.items()))
    return costs


def check(options: AsrFederationOptions) -> None:
    """Fail before any work: the homogeneous checks, and the proxy corpus the algorithm needs (same tokenizer)."""
    from fedwhisper.asr.federated import check as check_federation

    check_federation(options)
    if options.algorithm in ("fedkad", "fedmd"):
        if not options.proxy:
            raise FedwhisperError(
                f"--algorithm {options.algorithm} needs --proxy: prepared features of a public corpus the server holds"
            )
        proxy, manifest = features_of(str(Path(options.proxy).resolve()))
        if "train" not in proxy or len(proxy["train"]) < options.batch_size:
            raise FedwhisperError(f"{options.proxy}: the proxy corpus needs a train split of at least {options.batch_size} clips")
        if manifest["vocab_size"] != len(base_model(options.model)[1].tokenizer):
            raise FedwhisperError(
                f"{options.proxy} was prepared with another tokenizer ({manifest['model']}); prepare it for {options.model}"
            )


def test_models(options: AsrFederationOptions, evaluator: TierEvaluator, state: dict, out: Path) -> dict:
    """The final server models on every held-out test clip: WER, CER and WER per speaker, kept in ``out``."""
    from fedwhisper.asr.evaluate import speaker_wer

    rows = evaluation_rows(options, "test")
    result = {}
    for group, model in evaluator.models.items():
        load_trainable_state(model, group_state(state, group))
        tested = evaluate_model(options, model, rows)
        result[group] = {
            "tiers": evaluator.tiers_of(group),
            "wer": tested["wer"],
            "cer": tested["cer"],
            "clips": len(rows),
            "speakers": speaker_wer(tested["rows"], "en"),
        }
    out.write_text(json.dumps(result, indent=2))
    return result
