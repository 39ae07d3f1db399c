"""Heterogeneous clients (device tiers) on a tiny random Whisper: tiers, 2 rounds of each algorithm through the
ServerApp's job and the ClientApp, and what one FedKAD round puts on the wire."""

import json

import pytest
import torch

from fedwhisper.asr import hetero
from fedwhisper.asr.federated import AsrFederationOptions
from fedwhisper.asr.run import load_trainable_state, trainable_state
from fedwhisper.asr.tiers import assign_tiers, parse_tiers, simulated_seconds
from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.hetero_app import METRICS, build_hetero_client_app, federate
from fedwhisper.fl.strategy import WEIGHT, SeededGroups
from fedwhisper.models.registry import load_whisper
from tests.inprocess import InProcessGrid


@pytest.fixture(scope="module")
def four_layer_model(tiny_asr_model, tmp_path_factory):
    """The tiny random Whisper with 4 decoder layers, so that every tier has a depth of its own: pi 1, phone 2, laptop 4."""
    import shutil

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    out = tmp_path_factory.mktemp("four-layers") / "model"
    shutil.copytree(tiny_asr_model, out)
    config = WhisperConfig.from_pretrained(out)
    config.decoder_layers = 4
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(out)
    return out


@pytest.fixture
def options(tiny_features, four_layer_model, tmp_path):
    # costs given so that no device is late
    return AsrFederationOptions(
        features=str(tiny_features),
        model=str(four_layer_model),
        proxy=str(tiny_features),
        num_clients=3,
        clients_per_round=3,
        rounds=2,
        local_steps=1,
        batch_size=4,
        eval_clips=4,
        server_steps=2,
        public_clips=6,
        top_k=4,
        init_steps=3,
        tier_costs="1:0.001,2:0.001,4:0.001",
        cache_dir=str(tmp_path / "cache"),
    )


def test_tiers_are_dealt_by_share_and_seed():
    tiers = assign_tiers(10, "pi:0.4,phone:0.4,laptop:0.2", seed=0)
    assert sorted(tiers) == ["laptop"] * 2 + ["phone"] * 4 + ["pi"] * 4
    assert (
        tiers
        == assign_tiers(10, "pi:0.4,phone:0.4,laptop:0.2", seed=0)
        != assign_tiers(10, "pi:0.4,phone:0.4,laptop:0.2", seed=1)
    )
    assert sorted(assign_tiers(3, "pi:0.4,phone:0.4,laptop:0.2", 0)) == ["laptop", "phone", "pi"]
    for bad in ("pi:0.5,phone:0.4", "tablet:1.0", "pi:x,laptop:1"):
        with pytest.raises(FedwhisperError, match="--tiers"):
            parse_tiers(bad)
    # a Pi is ten times slower than this machine, and a round's jitter only slows it
    assert (
        simulated_seconds("pi", 0.01, 100, seed=0, round_number=1, client="a")
        >= 10.0
        > simulated_seconds("laptop", 0.01, 100, 0, 1, "a")
    )


@pytest.mark.parametrize("algorithm", ["fedkad", "fedmd", "fedavg-uniform", "fedavg-large"])
def test_two_rounds_of_each_algorithm(algorithm, options, tmp_path):
    # under fedavg-large a Pi would need 200 s for the 4-layer model
    costs = "1:0.001,2:0.001,4:5.0" if algorithm == "fedavg-large" else options.tier_costs
    chosen = AsrFederationOptions(**{**options.to_config(), "algorithm": algorithm, "tier_costs": costs})
    # the ServerApp's job and the ClientApp that `asr federate` runs on Flower's simulation engine, messages passed in
    # this process (Ray's start costs 30 s; the homogeneous federation's tests run it)
    run = federate(InProcessGrid(build_hetero_client_app(chosen.to_config()), chosen.to_config(), 3), chosen, tmp_path / "run")
    assert [row["round"] for row in run.rows] == [0, 1, 2]
    for row in run.rows[1:]:
        assert row["clients_failed"] == 0 and row["clients_trained"] >= 2
        assert all(
            f"wer/{tier}" in row for tier in ({"pi", "phone", "laptop"} - ({"pi"} if algorithm == "fedavg-large" else set()))
        )
    last = run.rows[-1]
    assert (
        len(last["simulated_seconds/laptop"]) == 1 and 0 < last["simulated_seconds/laptop"][0] <= last["simulated_round_seconds"]
    )
    if algorithm == "fedavg-large":
        assert "pi" not in last["client_tiers"] and last["bytes_up/pi"] == [] and "wer/pi" not in last
    if algorithm == "fedkad":  # a client sends its model's top decoder block and final norm; it gets its tier's decoder
        assert last["bytes_up/pi"] == last["bytes_up/phone"] == last["bytes_up/laptop"]
        assert last["bytes_down/pi"][0] < last["bytes_down/phone"][0] < last["bytes_down/laptop"][0]
        assert last["bytes_up/laptop"][0] < 0.6 * last["bytes_down/laptop"][0]
    if algorithm == "fedmd":  # only top-k logits of the public sample travel, and there is no server model
        assert max(last["bytes_up"]) < 20_000 and not (tmp_path / "run" / "models").exists()
    else:
        # test.json is each final model, as saved for the user, on every held-out test clip and speaker
        tested = json.loads((tmp_path / "run" / "test.json").read_text())
        rows = hetero.evaluation_rows(chosen, "test")
        depths = {}
        for group, result in tested.items():
            saved, _ = load_whisper(str(tmp_path / "run" / "models" / group))
            depths |= {tier: len(saved.model.decoder.layers) for tier in result["tiers"]}
            again = hetero.evaluate_model(chosen, saved, rows)
            assert result["clips"] == len(rows) and result["wer"] == pytest.approx(again["wer"])
            assert set(result["speakers"]) == set(rows["speaker_id"])
        assert depths == {tier: hetero.model_layers(chosen, tier) for tier in depths}
        if algorithm == "fedkad":  # a model of its own depth for every tier
            assert depths == {"pi": 1, "phone": 2, "laptop": 4}


def test_a_fedkad_round_sends_only_model_blocks_and_whitelisted_metrics(options, tiny_features):
    fedkad = AsrFederationOptions(**{**options.to_config(), "algorithm": "fedkad"})
    hetero.check(fedkad)
    plan = hetero.TierPlan(fedkad, hetero.parse_costs(fedkad.tier_costs))
    strategy = SeededGroups(3, 0, {101: "partition-00000", 102: "partition-00001", 103: "partition-00002"}, 0, plan)
    grid = InProcessGrid(build_hetero_client_app(fedkad.to_config()), fedkad.to_config(), 3)
    from flwr.app import ArrayRecord, ConfigRecord

    state = hetero.initial_state(fedkad)
    # the shared top block starts as the weakest tier's starting model's, which works alone
    weakest = hetero.initial_tier_state(fedkad, hetero.model_layers(fedkad, "pi"))
    assert all(torch.equal(value, state[f"pi/{key}"]) for key, value in weakest.items())
    messages = list(strategy.configure_train(1, ArrayRecord(state), ConfigRecord({"round-offset": 0, "seed": 0}), grid))
    replies = grid.send_and_receive(messages)
    new_state, _ = strategy.aggregate_train(1, replies)
    assert new_state is not None and strategy.last_round["clients_trained"] == 3

    for message, reply in zip(grid.sent, replies):
        tier = str(message.content["config"]["tier"])
        model = hetero.new_model(fedkad, hetero.model_layers(fedkad, tier))
        parameters = dict(model.named_parameters())
        top = len(model.model.decoder.layers) - 1
        # down: exactly the tier model's decoder blocks and final norm, with their shapes
        down = message.content["arrays"].to_torch_state_dict()
        assert set(down) == {k for k in parameters if k.startswith(("model.decoder.layers.", "model.decoder.layer_norm."))}
        # up: one ArrayRecord of the top block and the final norm, each a parameter of that shape; metrics whitelisted
        assert list(reply.content.array_records) == ["arrays"] and not reply.content.config_records
        up = reply.content["arrays"].to_torch_state_dict()
        assert set(up) == {k for k in down if k.startswith((f"model.decoder.layers.{top}.", "model.decoder.layer_norm."))}
        assert all(value.shape == parameters[key].shape for key, value in up.items())
        assert set(reply.content["metrics"].keys()) <= {*METRICS, WEIGHT}
        # and nothing the size of one of the client's utterances: samples, log-mel or encoder frames, or tokens
        shard = hetero.client_shard(fedkad, int(message.metadata.dst_node_id) - 101)
        lengths = {len(ids) for ids in shard["labels"]} | {len(f) for f in shard["input_features"]}
        lengths |= {int(round(d * 16_000)) for d in shard["duration"]}
        assert not any(set(value.shape) & lengths - set(parameters[key].shape) for key, value in up.items())
    merged = new_state.to_torch_state_dict()
    for key, value in merged.items():
        assert torch.isfinite(value).all(), key
    # the top block and final norm are one part shared by the tiers: the Pi's one block is the laptop's top block
    laptop_top = hetero.model_layers(fedkad, "laptop") - 1
    for key, value in hetero.group_state(merged, "pi").items():
        assert torch.equal(value, merged[f"laptop/{key.replace('layers.0.', f'layers.{laptop_top}.')}"]), key


def test_a_deeper_client_trains_its_top_block_also_as_the_weakest_tiers_model(options):
    fedkad = AsrFederationOptions(**{**options.to_config(), "algorithm": "fedkad"})
    laptop = hetero.new_model(fedkad, hetero.model_layers(fedkad, "laptop"), fedkad.upper_blocks)
    pi = hetero.new_model(fedkad, hetero.model_layers(fedkad, "pi"))
    top = len(laptop.model.decoder.layers) - 1
    assert hetero.is_nested(fedkad, top + 1) and not hetero.is_nested(fedkad, 1)
    load_trainable_state(pi, {k.replace(f"layers.{top}.", "layers.0."): v for k, v in trainable_state(laptop).items()})
    torch.manual_seed(0)
    inputs = {"encoder_outputs": (torch.randn(2, 30, laptop.config.d_model),), "labels": torch.randint(0, 50, (2, 6))}
    # the sub-network computes what the Pi model with the laptop's top block computes
    view = hetero.sub_network(fedkad, laptop)
    assert torch.allclose(view(**inputs, use_cache=False).logits, pi(**inputs, use_cache=False).logits, atol=1e-5)
    # and its cross-entropy's gradient reaches the laptop's top block, on top of the laptop's own
    laptop.zero_grad()
    hetero.nested_loss(fedkad, laptop)(laptop, inputs).backward()
    nested = {k: p.grad.clone() for k, p in laptop.named_parameters() if p.requires_grad}
    laptop.zero_grad()
    laptop(**inputs).loss.backward()
    pi(**inputs).loss.backward()
    pi_grads = {k.replace("layers.0.", f"layers.{top}."): p.grad for k, p in pi.named_parameters() if p.grad is not None}
    for key, parameter in laptop.named_parameters():
        if parameter.requires_grad:
            assert torch.allclose(nested[key], parameter.grad + pi_grads[key], atol=1e-5), key
