"""A Flower deployment on this machine: SuperLink and SuperNodes as separate processes, TLS, SuperNode authentication."""

import json
import ssl
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from safetensors.torch import load_file

from fedwhisper.fl.deploy import make_node_key
from fedwhisper.fl.kws_app import deployed_run_config, deployment_of
from fedwhisper.kws.task import KwsOptions


@pytest.mark.flower
@pytest.mark.xdist_group("kws-simulated")  # one worker computes the shared run
def test_a_tls_deployment_with_node_auth_trains_as_the_simulation_and_refuses_strangers(kws_simulated_run, tmp_path):
    simulated_options, simulated, _ = kws_simulated_run
    # one round of the shared two-round simulation: each round costs a ClientApp process (torch and all) per client
    options = KwsOptions(**{**simulated_options.to_config(), "cache_dir": str(tmp_path / "server-cache"), "rounds": 1})
    run_dir = tmp_path / "run"
    with deployment_of(options, tmp_path / "deployment") as deployment:
        # a SuperNode whose key was never registered, and one that speaks plain HTTP: both must be turned away
        private, _ = make_node_key(tmp_path / "stranger", "stranger")
        stranger = deployment.start_supernode("stranger", private, {}, max_wait=10)
        plaintext = deployment.start_supernode("plaintext", None, {}, insecure=True, max_wait=10)
        with pytest.raises(OSError):  # the SuperLink's port speaks only TLS
            urllib.request.urlopen(f"http://{deployment.address}/health", timeout=5)
        with pytest.raises(
            urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"
        ):  # under its own CA, which strangers do not trust
            urllib.request.urlopen(f"https://{deployment.address}/health", context=ssl.create_default_context(), timeout=5)
        assert deployment.online_nodes() == 3
        lines = []
        assert deployment.run(deployed_run_config(options, run_dir), lines.append, timeout=600) == 0, "\n".join(lines[-40:])
        assert stranger.wait(timeout=60) != 0 and plaintext.wait(timeout=60) != 0
        # both turned away (while the federation ran) for what each lacks: the stranger's key is not registered (the
        # SuperLink names that key), and the plain-HTTP node gets no answer from a port that speaks only TLS
        public = serialization.load_ssh_public_key((tmp_path / "stranger" / "stranger.pub").read_bytes())
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        stranger_key = "".join(pem.strip().splitlines()[1:-1])  # as the SuperLink logs it, without the PEM's line breaks
        refusals = [line for line in deployment.log("superlink").read_text().splitlines() if "No SuperNode found" in line]
        assert any(stranger_key in line.replace("\\n", "") for line in refusals), refusals
        assert "Failed to activate SuperNode" in deployment.log("stranger").read_text()
        assert "Server disconnected without sending a response" in deployment.log("plaintext").read_text()
    assert [row["round"] for row in json.loads((run_dir / "metrics.json").read_text())] == [0, 1]
    assert json.loads((run_dir / "metrics.json").read_text())[1]["clients_trained"] == 2
    # the same clients, data, seeds and aggregation order as the simulation engine's first round: the same head
    assert [r["clients_trained"] for r in json.loads((simulated / "metrics.json").read_text())[1:]] == [2, 2]
    deployed, local = (load_file(str(d / "head-round-001.safetensors")) for d in (run_dir, simulated))
    assert max(float((deployed[k] - local[k]).abs().max()) for k in local) <= 1e-6
    # each SuperNode was given only its own client's clips
    clients = sorted((tmp_path / "deployment" / "clients").glob("partition-*[0-9]"))
    assert len(clients) == 3
    files = [{p.name for p in c.rglob("*.wav") if p.parent.name != "_background_noise_"} for c in clients]
    assert all(files) and not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
