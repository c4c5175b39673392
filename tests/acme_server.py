"""A real ACME server for the tests: Debian's ``pebble`` (``scripts/setup --test``) on loopback.

:class:`Pebble` writes a config in a temporary directory and runs two processes of the
package: ``pebble-challtestsrv`` as a DNS server only (every name -> 127.0.0.1, no
AAAA), and ``pebble -dnsserver`` pointing at it.  ``PEBBLE_VA_ALWAYS_VALID`` is unset: the
HTTP-01 challenge really is fetched from ``http_port`` on 127.0.0.1.  Pebble's own
HTTPS listener (the ACME API) uses a self-signed certificate made here
(:attr:`Pebble.ca_bundle`, what a site's private CA bundle would be); its issuing
root is read from the management API (:meth:`Pebble.root_pem`).  No validation
sleeps, no nonce rejections, no reused authorizations (so a failing challenge fails).
Both processes are stopped by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from certs import make_cert

from binderbox.hub.children import free_port


@dataclass
class Pebble:
    """pebble + its DNS on loopback; HTTP-01 validated against ``http_port``."""

    http_port: int
    #: seconds each issued certificate is valid
    validity: int = 3600
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bbx-pebble-")))
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    pids: list[int] = field(default_factory=list)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def ca_bundle(self) -> Path:
        return self.root / "api.crt"  # make_cert's certificate of pebble's API

    def start(self) -> None:
        if not shutil.which("pebble"):
            raise RuntimeError("pebble is not installed: run scripts/setup --test")
        cert, key = make_cert(self.root, "api")
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": self.http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                "certificateValidityPeriod": self.validity,
            }
        }
        (self.root / "config.json").write_text(json.dumps(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        env |= {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        dns = [
            *("pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
            *("-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", ""),
            *("-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"),
        ]
        acme = [
            *("pebble", "-config", str(self.root / "config.json")),
            *("-dnsserver", f"127.0.0.1:{self.dns_port}"),
        ]
        for name, cmd in (("dns", dns), ("pebble", acme)):
            log = (self.root / f"{name}.log").open("wb")
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.pids.append(proc.pid)
        try:
            self._wait()
        except BaseException:  # a pebble that never answered is not left running
            self.stop()
            raise

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=self.ca_bundle)
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            body: bytes = answer.read()
            return body

    def _wait(self) -> None:
        for _ in range(100):
            try:
                self._get(self.directory)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pebble did not start: {(self.root / 'pebble.log').read_text()}")

    def root_pem(self) -> bytes:
        """The root that signs pebble's certificates (its management API)."""
        return self._get(f"https://127.0.0.1:{self.management_port}/roots/0")

    def log(self) -> str:
        return (self.root / "pebble.log").read_text(errors="replace")

    def stop(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, 15)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.pids.clear()
        shutil.rmtree(self.root, ignore_errors=True)
