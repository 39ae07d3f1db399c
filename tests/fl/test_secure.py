"""SecAgg+ on the keyword-spotting head: the masked aggregate equals plain FedAvg's within quantisation error, and no
reply the server receives holds a client's update in the clear."""

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray
from safetensors.torch import load_file
from tests.conftest import small_kws_options
from tests.inprocess import InProcessGrid

from fedwhisper.fl.kws_app import build_kws_client_app, federate
from fedwhisper.fl.secure import simulate_secure
from fedwhisper.kws.task import new_head


@pytest.mark.flower
def test_secagg_plus_sums_what_fedavg_sums_and_never_shows_an_update(tiny_whisper_dir, tiny_kws_corpus, tmp_path):
    options = small_kws_options(tiny_kws_corpus, tiny_whisper_dir, tmp_path / "cache", clients_per_round=3, rounds=1)
    received = []
    simulate_secure(options, tmp_path / "secure", max_weight=20, received=received)  # clients hold 11-17 examples
    config = options.to_config()  # plain FedAvg of the same round, messages passed in this process
    federate(InProcessGrid(build_kws_client_app(config), config, options.num_clients), options, tmp_path / "plain")
    secure, plain = (load_file(str(tmp_path / run / "head-round-001.safetensors")) for run in ("secure", "plain"))
    assert set(secure) == set(plain)
    differences = {key: float((secure[key] - plain[key]).abs().max()) for key in plain}
    # quantisation: each client's scaled update to 16 / 2^22 = 3.8e-6, so the mean to ~1e-5 of the weights
    assert max(differences.values()) < 2e-5, differences
    assert max(float((plain[k] - new_head(options).state_dict()[k]).abs().max()) for k in plain) > 1e-3  # the round did train

    # What the server got from each client in the masking stage: its quantised update (integers below 2^22 if it were in
    # the clear) plus masks, modulo 2^32. Masked, nearly every entry lands above 2^22; in the clear, none would.
    masked = [
        np.concatenate([bytes_to_ndarray(b).ravel() for b in record["masked_params"]])
        for reply in received
        if not reply.has_error()
        for record in reply.content.config_records.values()
        if "masked_params" in record
    ]
    assert len(masked) == 3
    for vector in masked:
        assert np.mean(vector >= 2**22) > 0.95
