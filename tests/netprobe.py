"""What sandboxed code can reach: the probe it runs, and the targets the host offers.

:data:`PROBE` is Python that sandboxed code runs (a kernel cell, a postBuild, a
dataset code source): it tries a TCP connection to each ``TARGETS`` entry, and
fetches a page from PyPI (the public internet), and prints one JSON line.
:func:`host_targets` lists what the host offers to a sandbox: every TCP port it
listens on, at every address a sandbox could send to (the bridge's gateway and
the host's own interface addresses; its loopback is the sandbox's own there).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from binderbox.runtime.network import SandboxNetwork

PROBE = r"""
import json, os, socket, urllib.request
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "open"
    except OSError as err:
        return type(err).__name__
out = {f"{h}:{p}": tcp(h, p) for h, p in json.loads(TARGETS)}
try:
    out["pypi"] = urllib.request.urlopen("https://pypi.org/simple/six/", timeout=60).status
except Exception as err:
    out["pypi"] = repr(err)
out["api"] = os.environ.get("JUPYTERHUB_API_URL", "")
out["api_token"] = os.environ.get("JUPYTERHUB_API_TOKEN", "")
print("PROBE " + json.dumps(out))
"""


def probe_code(targets: list[tuple[str, int]]) -> str:
    """:data:`PROBE` with its targets."""
    return PROBE.replace("TARGETS", repr(json.dumps(targets)))


def probe_result(output: str) -> dict[str, object]:
    """The JSON line :data:`PROBE` printed."""
    line = next(ln for ln in output.splitlines() if ln.startswith("PROBE "))
    result: dict[str, object] = json.loads(line.removeprefix("PROBE "))
    return result


def listening_ports() -> set[int]:
    """Every TCP port this host listens on (/proc/net/tcp and tcp6, state LISTEN)."""
    ports = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def host_addresses() -> list[str]:
    """The IPv4 addresses a sandbox could use to reach this host: the bridge's gateway
    and every address of the host's other interfaces (test hosts' links left out)."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, check=True)
    found = [SandboxNetwork().gateway]
    for interface in json.loads(out.stdout):
        name = str(interface.get("ifname", ""))
        if name == "lo" or name.startswith("bbxt"):
            continue
        found += [str(info["local"]) for info in interface.get("addr_info", [])]
    return list(dict.fromkeys(found))


def host_targets() -> list[tuple[str, int]]:
    """(address, port) for every listening port at every host address."""
    return [(a, p) for a in host_addresses() for p in sorted(listening_ports())]
