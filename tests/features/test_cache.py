import json

import numpy as np

from fedwhisper.features.cache import FeatureCache, content_key


def fake_encoder(calls):
    def compute(indices):
        calls.append(list(indices))
        return np.stack([np.full((2, 3), i, dtype=np.float16) for i in indices])

    return compute


def test_only_missing_clips_are_encoded_and_rows_come_back_in_order(tmp_path):
    calls = []
    cache = FeatureCache(tmp_path, "encoder-a")
    first, encoded = cache.get_or_compute(["k1", "k2", "k1"], fake_encoder(calls))
    assert encoded == 2 and calls == [[0, 1]]
    assert first[:, 0, 0].tolist() == [0, 1, 0]
    again, encoded = FeatureCache(tmp_path, "encoder-a").get_or_compute(["k2", "k3"], fake_encoder(calls))
    assert encoded == 1 and calls[-1] == [1]
    assert again[:, 0, 0].tolist() == [1, 1]  # k2 from the store, k3 computed as index 1
    assert len(cache) == 3


def test_changed_audio_gets_a_new_key_and_another_encoder_another_store(tmp_path):
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF-one")
    before = content_key(str(clip))
    clip.write_bytes(b"RIFF-two")
    assert content_key({"path": str(clip), "bytes": None}) != before
    assert content_key(np.ones(4, dtype=np.float32)) != content_key(np.zeros(4, dtype=np.float32))

    calls = []
    FeatureCache(tmp_path / "c", "model-x-1s").get_or_compute(["k"], fake_encoder(calls))
    FeatureCache(tmp_path / "c", "model-x-30s").get_or_compute(["k"], fake_encoder(calls))
    assert len(calls) == 2


def test_a_torn_chunk_is_computed_again_not_trusted(tmp_path):
    calls = []
    cache = FeatureCache(tmp_path, "enc")
    cache.get_or_compute(["a", "b"], fake_encoder(calls))
    (cache.directory / "chunk-00000.keys.json").write_text(json.dumps(["a"]))  # keys that do not match the rows
    _, encoded = FeatureCache(tmp_path, "enc").get_or_compute(["a", "b"], fake_encoder(calls))
    assert encoded == 2


def test_an_interrupted_encoding_keeps_its_finished_chunks(tmp_path):
    calls = []

    def fails_on_the_second_chunk(indices):
        if calls:
            raise KeyboardInterrupt
        return fake_encoder(calls)(indices)

    keys = [f"k{i}" for i in range(5)]
    try:
        FeatureCache(tmp_path, "enc").get_or_compute(keys, fails_on_the_second_chunk, chunk_rows=2)
    except KeyboardInterrupt:
        pass
    later = []
    rows, encoded = FeatureCache(tmp_path, "enc").get_or_compute(keys, fake_encoder(later), chunk_rows=2)
    assert encoded == 3 and later == [[2, 3], [4]]
    assert rows[:, 0, 0].tolist() == [0, 1, 2, 3, 4]
