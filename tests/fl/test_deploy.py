"""A Flower deployment on this machine: SuperLink and SuperNodes as separate processes, TLS, SuperNode authentication."""

import json
import ssl
import urllib.error
import urllib.request

import pytest
from safetensors.torch import load_file

from fedwhisper.fl.deploy import make_node_key
from fedwhisper.fl.kws_app import deployed_run_config, deployment_of, simulate
from fedwhisper.kws.task import KwsOptions


def test_a_tls_deployment_with_node_auth_trains_as_the_simulation_and_refuses_strangers(tiny_whisper_dir, tiny_kws_corpus, tmp_path):
    options = KwsOptions(corpus=str(tiny_kws_corpus), model=str(tiny_whisper_dir), keywords="yes,no,up", num_clients=3,
                         clients_per_round=2, rounds=2, local_epochs=1, cache_dir=str(tmp_path / "server-cache"))
    run_dir = tmp_path / "run"
    with deployment_of(options, tmp_path / "deployment") as deployment:
        # a SuperNode whose key was never registered, and one that speaks plain HTTP: both must be turned away
        private, _ = make_node_key(tmp_path / "stranger", "stranger")
        stranger = deployment.start_supernode("stranger", private, {}, max_wait=10)
        plaintext = deployment.start_supernode("plaintext", None, {}, insecure=True, max_wait=10)
        with pytest.raises(OSError):  # the SuperLink's port speaks only TLS
            urllib.request.urlopen(f"http://{deployment.address}/health", timeout=5)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # under its own CA, which strangers do not trust
            urllib.request.urlopen(f"https://{deployment.address}/health", context=ssl.create_default_context(), timeout=5)
        assert stranger.wait(timeout=60) != 0 and plaintext.wait(timeout=60) != 0
        assert deployment.online_nodes() == 3
        lines = []
        assert deployment.run(deployed_run_config(options, run_dir), lines.append, timeout=600) == 0, "\n".join(lines[-40:])
    assert [row["round"] for row in json.loads((run_dir / "metrics.json").read_text())] == [0, 1, 2]
    assert all(row["clients_trained"] == 2 for row in json.loads((run_dir / "metrics.json").read_text())[1:])
    # the same clients, data, seeds and aggregation order as the simulation engine's run: the same head
    simulated = simulate(options, tmp_path / "simulated")
    assert [r["clients_trained"] for r in simulated.rows[1:]] == [2, 2]
    deployed, local = (load_file(str(d / "head-round-002.safetensors")) for d in (run_dir, tmp_path / "simulated"))
    assert max(float((deployed[k] - local[k]).abs().max()) for k in local) <= 1e-6
    # each SuperNode was given only its own client's clips
    clients = sorted((tmp_path / "deployment" / "clients").glob("partition-*[0-9]"))
    assert len(clients) == 3
    files = [{p.name for p in c.rglob("*.wav") if p.parent.name != "_background_noise_"} for c in clients]
    assert all(files) and not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
