"""Every message a client sends in a KWS round and an ASR round, recorded and read: only the trainable tensors it was
sent (same names and shapes) and whitelisted numeric metrics; no audio, features, text, file paths or speaker ids."""

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from tests.conftest import small_kws_options

from fedwhisper.asr.federated import client_shard, initial_state
from fedwhisper.fl import asr_app, kws_app
from fedwhisper.fl.server import CLIENT_NAME
from fedwhisper.fl.strategy import WEIGHT
from fedwhisper.kws.task import TRAINING_FIELDS, client_examples, new_head


def _sent_by_client(app, arrays: dict, config: dict, partition: int, run_config: dict) -> list[Message]:
    """What the client answers to the server's two kinds of message: its name (query) and a training round."""
    context = Context(
        run_id=1,
        node_id=partition + 1,
        node_config={"partition-id": partition, "num-partitions": 3},
        state=RecordDict(),
        run_config=run_config,
    )
    query = Message(
        RecordDict({"config": ConfigRecord({"ask": CLIENT_NAME})}), dst_node_id=partition + 1, message_type=MessageType.QUERY
    )
    train = Message(
        RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({**config, "server-round": 1, "round-offset": 0})}),
        dst_node_id=partition + 1,
        message_type=MessageType.TRAIN,
    )
    return [app(query, context), app(train, context)]


def _check(replies: list[Message], arrays: dict, metric_keys: tuple[str, ...], secrets: list[str]) -> None:
    name, trained = replies
    assert not name.has_error() and not trained.has_error()
    assert list(name.content.config_records) == ["config"] and dict(name.content["config"]) == {CLIENT_NAME: "partition-00001"}
    assert not name.content.array_records and not name.content.metric_records
    content = trained.content
    assert (
        list(content.array_records) == ["arrays"] and list(content.metric_records) == ["metrics"] and not content.config_records
    )
    sent_back = content["arrays"]
    assert set(sent_back.keys()) == set(arrays)
    assert all(tuple(sent_back[k].shape) == tuple(arrays[k].shape) for k in arrays)
    metrics = dict(content["metrics"])
    assert set(metrics) == {*metric_keys, WEIGHT} and metrics[WEIGHT] > 0
    assert all(isinstance(value, int | float) for value in metrics.values())
    wire = b"".join(array.data for array in sent_back.values())  # nothing of the client's data hides in the arrays' bytes
    for secret in secrets:
        assert secret.encode() not in wire and all(secret not in key for key in [*sent_back.keys(), *metrics])


def test_a_kws_client_sends_only_head_weights_and_whitelisted_metrics(tiny_whisper_dir, tiny_kws_corpus, tmp_path):
    options = small_kws_options(tiny_kws_corpus, tiny_whisper_dir, tmp_path / "cache", rounds=1)
    head = new_head(options).state_dict()
    config = {k: v for k, v in options.to_config().items() if k in TRAINING_FIELDS}
    replies = _sent_by_client(kws_app.build_kws_client_app(options.to_config()), head, config, 1, {})
    examples = client_examples(options, 1)
    secrets = [str(tiny_kws_corpus), ".wav", *{s for s in examples.speakers}]
    _check(replies, head, kws_app.METRICS, secrets)


def test_an_asr_client_sends_only_lora_adapters_and_whitelisted_metrics(asr_options, tiny_features):
    options = asr_options
    adapters = initial_state(options)
    replies = _sent_by_client(asr_app.build_asr_client_app(options.to_config()), adapters, {}, 1, {})
    shard = client_shard(options, 1)
    secrets = [
        str(tiny_features),
        *set(shard["speaker_id"]),
        *{Path(p).name for p in shard["path"]},
        *set(shard["transcription"]),
    ]
    _check(replies, adapters, asr_app.METRICS, secrets)
    assert all("lora_" in key for key in replies[1].content["arrays"].keys())


def test_a_dp_round_clips_the_update_before_it_leaves(tiny_whisper_dir, tiny_kws_corpus, tmp_path):
    options = small_kws_options(
        tiny_kws_corpus, tiny_whisper_dir, tmp_path / "cache", rounds=1, local_epochs=3, learning_rate=0.05
    )
    head = new_head(options).state_dict()
    config = {k: v for k, v in options.to_config().items() if k in TRAINING_FIELDS} | {"clipping_norm": 0.01}
    _, trained = _sent_by_client(kws_app.build_kws_client_app(options.to_config()), head, config, 1, {})
    update = np.sqrt(sum(float(((trained.content["arrays"][k].numpy() - head[k].numpy()) ** 2).sum()) for k in head))
    assert update == pytest.approx(0.01, rel=1e-3)  # fixedclipping_mod cut it to the norm the server asked for
