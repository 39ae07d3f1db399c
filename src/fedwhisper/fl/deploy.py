"""A Flower deployment: credentials (``cryptography``), a SuperLink and SuperNodes as separate processes over TLS with
SuperNode authentication, `flwr run` against them, and every process this module started stopped at the end.

The same steps on real machines are Flower's own commands (README, "Deploy on real machines"); ``Deployment`` runs
them on this one: the SuperLink's one HTTPS port serves the Fleet, Control and Runtime APIs; each SuperNode gets
its own key (registered with `flwr supernode register` before it connects) and only its own client's data through
``--node-config``. Waits are bounded; a process that outlives ``stop`` is killed with its children.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedwhisper.errors import FedwhisperError

log = logging.getLogger("fedwhisper.fl")

CONNECTION = "fedwhisper"  # the SuperLink connection's name in the deployment's Flower configuration
PROJECT = Path(__file__).resolve().parents[3]  # the Flower app: the repository's pyproject.toml


@dataclass(frozen=True)
class Credentials:
    """The SuperLink's TLS files: the CA certificate SuperNodes and `flwr` trust, and the server's certificate and key."""

    ca: Path
    certificate: Path
    key: Path


def make_certificates(
    out: str | os.PathLike, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 365
) -> Credentials:
    """A self-signed CA and a server certificate it signs, valid for ``hosts`` (names or IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, public_key, issuer, signing_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedwhisper federation CA")])
    ca = certificate(
        "fedwhisper federation CA", ca_key.public_key(), ca_name, ca_key, [(x509.BasicConstraints(ca=True, path_length=0), True)]
    )
    names = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    server = certificate(
        hosts[0],
        server_key.public_key(),
        ca.subject,
        ca_key,
        [(x509.SubjectAlternativeName(names), False), (x509.BasicConstraints(ca=False, path_length=None), True)],
    )
    credentials = Credentials(out / "ca.crt", out / "server.crt", out / "server.key")
    credentials.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    credentials.certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_private(
        credentials.key,
        server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return credentials


def make_node_key(out: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair (ECDSA P-384, OpenSSH format, as Flower reads them): (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    _write_private(
        private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _tool(name: str) -> str:
    """A Flower command installed next to this Python (the project's virtual environment), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    if found := shutil.which(name):
        return found
    raise FedwhisperError(f"{name} not found: install flwr (`make setup`)")


class Processes:
    """Processes started for a deployment, each in a session of its own with its output in a log file; ``stop``
    ends them and everything they started (Flower's SuperExec and app processes), waiting at most ``timeout``."""

    def __init__(self) -> None:
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], log: Path, env: dict) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as stream:
            process = subprocess.Popen(argv, stdout=stream, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.started[name] = process
        return process

    def stop(self, name: str, timeout: float = 10.0) -> None:
        process = self.started.pop(name)
        stop_tree(process.pid, timeout)
        process.wait(timeout=timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        for name in reversed(list(self.started)):
            self.stop(name, timeout)


def stop_tree(pid: int, timeout: float = 10.0) -> None:
    """End a process and everything it started: SIGTERM, then SIGKILL for what is left after ``timeout``."""
    import psutil

    tree = _members(pid)
    for member in tree:
        _signal(member, "terminate")
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for member in alive:
        _signal(member, "kill")
    psutil.wait_procs(alive, timeout=timeout)


def _members(leader: int) -> list:
    """A started process and what it started: its descendants, its session (it was started in a new one; Flower's
    SuperExec stays in it even after the SuperNode exits) and Flower processes that name it as ``--parent-pid``."""
    import psutil

    members = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = process.info["cmdline"] or []
            owned = os.getsid(process.pid) == leader or any(
                a == "--parent-pid" and b == str(leader) for a, b in zip(cmdline, cmdline[1:])
            )
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue  # ended while the table was read: nothing to stop
        except (psutil.Error, OSError) as error:
            log.warning("process %d left alone: it cannot be inspected (%s)", process.pid, error)
            continue
        if owned or process.pid == leader:
            members[process.pid] = process
    for pid in list(members):
        try:
            members.update({child.pid: child for child in members[pid].children(recursive=True)})
        except psutil.NoSuchProcess:
            pass  # ended meanwhile, and its children with it or re-parented to the session (found above)
        except psutil.Error as error:
            log.warning("children of process %d left alone: they cannot be listed (%s)", pid, error)
    return list(members.values())


def _signal(process, how: str) -> None:
    import psutil

    try:
        getattr(process, how)()
    except psutil.NoSuchProcess:
        pass  # already gone: what the signal was for


class Deployment:
    """A SuperLink and SuperNodes on this machine, as separate processes, with their files under ``home``:
    ``keys/`` (CA, server certificate, node keys), ``flwr/`` (the Flower configuration naming the SuperLink),
    ``logs/`` (one log per process). A context manager: leaving it stops every process."""

    def __init__(self, home: str | os.PathLike, host: str = "127.0.0.1", port: int | None = None, startup_timeout: float = 60.0):
        self.home = Path(home).resolve()
        self.host, self.port = host, port or free_port(host)
        self.startup_timeout = startup_timeout
        self.processes = Processes()
        self.credentials = make_certificates(
            self.home / "keys", hosts=("localhost", host) if host != "localhost" else ("localhost",)
        )
        self.flwr_home = self.home / "flwr"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{self.address}"\n'
            f'root-certificates = "{self.credentials.ca}"\n',
            encoding="utf-8",
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def start_superlink(self) -> None:
        """The SuperLink over TLS with SuperNode authentication; returns once it answers on its port."""
        c = self.credentials
        process = self.processes.start(
            "superlink",
            [
                _tool("flower-superlink"),
                "--ssl-ca-certfile",
                str(c.ca),
                "--ssl-certfile",
                str(c.certificate),
                "--ssl-keyfile",
                str(c.key),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                self.host,
                "--port",
                str(self.port),
            ],
            self.log("superlink"),
            self.env,
        )
        deadline = time.monotonic() + self.startup_timeout
        while not self._answers():
            if process.poll() is not None:
                raise FedwhisperError(f"the SuperLink exited with code {process.returncode} (see {self.log('superlink')})")
            if time.monotonic() > deadline:
                raise FedwhisperError(
                    f"the SuperLink did not answer on {self.address} within {self.startup_timeout:g} s (see "
                    f"{self.log('superlink')})"
                )
            time.sleep(0.3)

    def _answers(self) -> bool:
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.credentials.ca))
        try:
            with urllib.request.urlopen(f"https://{self.address}/health", context=context, timeout=2):
                return True
        except OSError:
            return False

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """A `flwr` command against this deployment's SuperLink."""
        try:
            return subprocess.run([_tool("flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise FedwhisperError(f"`flwr {' '.join(args)}` did not finish within {timeout:g} s") from error

    def register(self, public_key: Path) -> int:
        """Add a SuperNode's public key to the federation (`flwr supernode register`); its node id."""
        result = self.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        try:
            return int(json.loads(result.stdout)["node-id"])
        except (ValueError, KeyError) as error:
            raise FedwhisperError(
                f"registering {public_key.name} failed: {(result.stdout + result.stderr).strip()[-300:]}"
            ) from error

    def start_supernode(
        self, name: str, private_key: Path | None, node_config: dict, insecure: bool = False, max_wait: float | None = None
    ) -> subprocess.Popen:
        """A SuperNode named ``name`` given ``node_config`` (its client name and data); authenticated with ``private_key``
        over TLS, or (``insecure``) over plain HTTP without a key, which the SuperLink must refuse."""
        config = " ".join(f"{key}={json.dumps(value)}" for key, value in {"client-name": name, **node_config}.items())
        argv = [
            _tool("flower-supernode"),
            "--superlink",
            self.address,
            "--node-config",
            config,
            "--port",
            str(free_port(self.host)),
        ]
        argv += ["--insecure"] if insecure else ["--root-certificates", str(self.credentials.ca)]
        if private_key is not None:
            argv += ["--auth-supernode-private-key", str(private_key)]
        if max_wait is not None:
            argv += ["--max-wait-time", str(max_wait)]
        # one thread per SuperNode: the simulation engine gives each client one CPU, and the numbers then agree bit for bit
        return self.processes.start(name, argv, self.log(name), {**self.env, "OMP_NUM_THREADS": "1"})

    def online_nodes(self) -> int:
        result = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        try:
            nodes = json.loads(result.stdout)["nodes"]
        except (ValueError, KeyError) as error:
            raise FedwhisperError(f"`flwr supernode list` failed: {(result.stdout + result.stderr).strip()[-300:]}") from error
        return sum(node.get("status") == "online" for node in nodes)

    def wait_online(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while (online := self.online_nodes()) < count:
            if time.monotonic() > deadline:
                raise FedwhisperError(
                    f"only {online} of {count} SuperNodes came online within {timeout:g} s (see {self.home / 'logs'})"
                )
            time.sleep(1.0)

    def run(self, run_config: dict, on_line: Callable[[str], None] | None = None, timeout: float = 3600.0) -> int:
        """`flwr run` of the project's app on this deployment, its log streamed line by line to ``on_line`` and
        ``logs/run.log``; the exit code. A run longer than ``timeout`` is stopped (`flwr stop`) and named."""
        app = self.home / "app"
        app.mkdir(exist_ok=True)
        shutil.copy(PROJECT / "pyproject.toml", app / "pyproject.toml")  # the app's components and config; the code is installed
        overrides = " ".join(f"{key}={json.dumps(value)}" for key, value in run_config.items())
        argv = [_tool("flwr"), "run", str(app), CONNECTION, "--stream", "--run-config", overrides]
        with open(self.log("run"), "a", encoding="utf-8") as log:
            process = subprocess.Popen(
                argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
            watchdog = threading.Timer(timeout, process.kill)  # a stalled run prints nothing: reading its output would not notice
            watchdog.start()
            try:
                for line in process.stdout:
                    log.write(line)
                    log.flush()
                    if on_line:
                        on_line(line.rstrip("\n"))
                code = process.wait()
            finally:
                watchdog.cancel()
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if watchdog.finished.is_set() and code < 0:
            raise FedwhisperError(f"the run did not finish within {timeout:g} s (see {self.log('run')})")
        return code

    def stop(self) -> None:
        self.processes.stop_all()
