"""A real registry for tests: Debian's ``docker-registry`` (Distribution 2.8) on loopback.

:class:`LocalRegistry` runs one on a free loopback port with its storage in a test folder:
plain HTTP, or TLS with a certificate made here (:func:`make_cert`), and no
authentication, HTTP Basic from an htpasswd file (bcrypt), or Distribution's token
authentication, whose token service is :class:`TokenService` (a loopback server of this
test process issuing JWTs signed with the key the registry trusts -- Distribution has no
token service of its own; the registry's checks of the tokens are its own).  Its access
log (``log``) says which requests it answered.  :func:`skopeo` runs skopeo against it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import jwt
import yaml
from certs import make_cert
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fixtures_git import free_port
from loopback import LoopbackServer

REPOSITORY = "binderbox/envs"
USER, PASSWORD = "pusher", "s3cret-pass"


class TokenService(LoopbackServer):
    """Distribution's token service protocol: ``GET /token?service=&scope=`` with HTTP
    Basic of :data:`USER` -> ``{"token": <JWT>}`` granting the asked actions; 401 otherwise."""

    def __init__(self, folder: Path) -> None:
        self.cert, key_path = make_cert(folder, "token-signer")
        self.key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        der = x509.load_pem_x509_certificate(self.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        self.chain = [base64.b64encode(der).decode()]
        self.requests: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.requests.append(self.path)
                status, body = service.answer(self.path, self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)

    def answer(self, path: str, authorization: str) -> tuple[int, dict[str, Any]]:
        wanted = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if authorization != wanted:
            return 401, {"details": "bad credentials"}
        query = parse_qs(urlsplit(path).query)
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": "binderbox-test-tokens",
            "sub": USER,
            "aud": query.get("service", [""])[0],
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": self.chain})  # type: ignore[arg-type]
        return 200, {"token": token}


class LocalRegistry:
    """A ``docker-registry`` process on a free loopback port (see the module docstring).

    ``auth``: ``None``, ``"htpasswd"`` or ``"token"``; ``tls``: serve HTTPS.
    """

    def __init__(self, folder: Path, *, auth: str | None = None, tls: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.cert: Path | None = None
        self.tokens: TokenService | None = None
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if tls:
            self.cert, key = make_cert(folder, "registry")
            config["http"]["tls"] = {"certificate": str(self.cert), "key": str(key)}
        if auth == "htpasswd":
            hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=6)).decode()
            (folder / "htpasswd").write_text(f"{USER}:{hashed}\n")
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(folder / "htpasswd")}}
        elif auth == "token":
            self.tokens = TokenService(folder)
            config["auth"] = {
                "token": {
                    "realm": f"{self.tokens.url}/token",
                    "service": "binderbox-test-registry",
                    "issuer": "binderbox-test-tokens",
                    "rootcertbundle": str(self.tokens.cert),
                }
            }
        (folder / "config.yml").write_text(yaml.safe_dump(config))
        self.log_path = folder / "registry.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", str(folder / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait()

    def _wait(self) -> None:
        for _ in range(200):
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("docker-registry did not listen in 10 s")

    def log(self) -> str:
        """What the registry logged so far (its access log among it)."""
        return self.log_path.read_text(errors="replace")

    def uploads_started(self) -> int:
        """How many blob uploads the registry was asked to start (access log lines)."""
        return sum(
            1
            for line in self.log().splitlines()
            if '"POST /v2/' in line and "/blobs/uploads/" in line
        )

    def auth_file(self, folder: Path, password: str = PASSWORD) -> Path:
        """A docker-style auth file with credentials for this registry."""
        token = base64.b64encode(f"{USER}:{password}".encode()).decode()
        path = folder / f"auth-{secrets.token_hex(3)}.json"
        path.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        return path

    def close(self) -> None:
        """Stop the registry (and its token service)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.tokens is not None:
            self.tokens.close()


def skopeo(
    registry: LocalRegistry, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run skopeo with ``args`` trusting ``registry`` (its certificate, or plain HTTP)."""
    tls = [f"--cert-dir={registry.folder / 'certs'}"] if registry.cert else ["--tls-verify=false"]
    if registry.cert is not None:
        (registry.folder / "certs").mkdir(exist_ok=True)
        (registry.folder / "certs" / "ca.crt").write_bytes(registry.cert.read_bytes())
    command, *rest = args
    flags = tls if command == "inspect" else [f"--src-{flag[2:]}" for flag in tls]
    return subprocess.run(
        ["skopeo", command, *flags, *rest],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )
