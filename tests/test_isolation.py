"""Sessions are isolated from the host, from each other and from private networks.

A REAL hub and proxy, REAL sandboxed sessions (code run through the kernel
API, as a visitor's notebook runs it), REAL test hosts on a private and on a
link-local address (network namespaces made here, tests/nethosts.py).  Traffic
goes only to this machine's own addresses, to those test hosts and to PyPI.
The cloud metadata address itself is never contacted: that it is blocked is
shown by the rule set and by the link-local test host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from envs import built_env
from kernels import execute, run_code, start_kernel
from nethosts import NamespaceHost, can_make_hosts, namespace_host
from netprobe import host_targets, probe_code, probe_result
from session_helpers import descendants, fetch, new_session, running_hub, user_of
from testcache import CACHE as TEST_CACHE

from binderbox.builders.python import PythonBuilder
from binderbox.data.fetchers.base import FetchContext
from binderbox.data.fetchers.code import CodeFetcher
from binderbox.data.requirement import DataEntry
from binderbox.environments import EnvSpec
from binderbox.hub import ManagedHub
from binderbox.runtime.host import SandboxHost, Step
from binderbox.runtime.layout import base_sandbox
from binderbox.runtime.network import TABLE, SandboxNetwork
from binderbox.sessions.hubclient import HubClient

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not can_make_hosts(), reason="network isolation needs root"),
]
module_loop = pytest.mark.asyncio(loop_scope="module")
#: an interpreter every host uid may run (the suite's own may sit under /root)
PYTHON = "/usr/bin/python3"
#: this suite's interpreter (binderbox importable), for another binderbox process
PYTHON_SELF = sys.executable


@pytest.fixture(scope="module")
def private_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceHost]:
    root = tmp_path_factory.mktemp("private-site")
    (root / "secret.txt").write_text("internal\n")
    with namespace_host("10.254.0.0/16", root) as host:
        yield host


@pytest.fixture(scope="module")
def link_local_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceHost]:
    root = tmp_path_factory.mktemp("metadata-like")
    (root / "latest").write_text("credentials\n")
    with namespace_host("169.254.77.0/24", root) as host:
        yield host


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host file that repository content links to."""
    path = tmp_path_factory.mktemp("host-files") / "victim.txt"
    path.write_text("host file\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory, victim: Path) -> Path:
    root = tmp_path_factory.mktemp("content")
    (root / "README.md").write_text("# isolated\n")
    (root / "start").symlink_to(victim)  # a start script that is a link to a host file
    (root / "link-to-host").symlink_to(victim)
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ManagedHub]:
    async with running_hub(tmp_path_factory.mktemp("data")) as managed:
        yield managed


async def session_address(hub: ManagedHub, ready: Any) -> str:
    client = HubClient(hub.hub_api_url, hub.api_token)
    server = (await client.get_user(user_of(ready)))["servers"][""]
    return str(server["state"]["sandbox_ip"])


def reachable_from_host(host: NamespaceHost) -> bool:
    with urllib.request.urlopen(host.url, timeout=10) as answer:
        return bool(answer.status == 200)


@module_loop
async def test_a_session_reaches_only_its_hub_and_the_internet(
    hub: ManagedHub, content: Path, private_host: NamespaceHost, link_local_host: NamespaceHost
) -> None:
    ready = await new_session(hub, content, "probe")
    other = await new_session(hub, content, "other")
    assert reachable_from_host(private_host) and reachable_from_host(link_local_host)
    other_address = await session_address(hub, other)
    targets = [
        *host_targets(),
        (hub.hub_ip, hub.hub_port),
        (other_address, 8888),  # another session's server
        (private_host.address, private_host.port),
        (link_local_host.address, link_local_host.port),
    ]
    out = probe_result(await run_code(ready.url, ready.token, probe_code(targets)))
    api = f"{hub.hub_ip}:{hub.hub_port}"
    assert out["api"] == f"http://{api}{hub.base_url}hub/api"
    opened = sorted(k for k, v in out.items() if v == "open")
    assert opened == [api], out  # only its own hub's API port
    assert out["pypi"] == 200  # the public internet works


@module_loop
async def test_ports_taken_in_a_session_do_not_take_the_hub(hub: ManagedHub, content: Path) -> None:
    ready = await new_session(hub, content, "squatter")
    kernel = await start_kernel(ready.url, ready.token)
    ports = [hub.hub_port, hub.public_port, hub.proxy_api_port]
    bind = (
        "import socket\nheld = []\n"
        f"for port in {ports!r}:\n"
        "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "    s.bind(('0.0.0.0', port)); s.listen(); s.setblocking(False); held.append(s)\n"
        "print('bound', len(held))\n"
    )
    assert (await execute(ready.url, ready.token, kernel, bind)).strip() == "bound 3"
    hub_proc = hub.children["hub"].proc
    assert hub_proc is not None
    hub_proc.kill()  # the hub dies; its port is free on the host for a moment
    await hub_proc.wait()
    await hub.restart_child("hub")
    after = await new_session(hub, content, "after-restart")
    status = await fetch(f"{after.url}api/status?token={after.token}")
    assert status.code == 200
    check = (
        "got = []\nfor s in held:\n    try:\n        s.accept(); got.append(s.getsockname())\n"
        "    except BlockingIOError:\n        pass\nprint('connections', len(got))\n"
    )
    assert (await execute(ready.url, ready.token, kernel, check)).strip() == "connections 0"


def host_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def command_lines() -> list[bytes]:
    lines = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                lines.append(Path(entry.path, "cmdline").read_bytes())
            except OSError:
                continue
    return lines


@module_loop
async def test_sessions_run_as_their_own_uid_and_no_token_is_on_a_command_line(
    hub: ManagedHub, content: Path, victim: Path
) -> None:
    first = await new_session(hub, content, "uid-one")
    second = await new_session(hub, content, "uid-two")
    client = HubClient(hub.hub_api_url, hub.api_token)
    host = SandboxHost()
    uids = []
    for ready in (first, second):
        state = (await client.get_user(user_of(ready)))["servers"][""]["state"]
        below = descendants(int(state["pid"]))
        assert below, "the supervisor has no sandbox"
        seen = {host_uid(pid) for pid in below}
        assert seen == {state["sandbox_uid"]}, seen
        assert host.uid_base < state["sandbox_uid"] < host.uid_base + host.uid_count
        uids.append(state["sandbox_uid"])
    assert uids[0] != uids[1]  # one uid per session

    out = probe_result(await run_code(first.url, first.token, probe_code([])))
    api_token = str(out["api_token"])
    assert api_token and first.token
    lines = command_lines()
    hub_dir = Path(hub.data_dir) / "hub"
    service = [(hub_dir / name).read_text().strip() for name in ("service_token", "proxy_token")]
    for secret in (first.token, api_token, *service):
        assert not [line for line in lines if secret.encode() in line]

    # the repository's start script and another entry were links to a host file
    info = victim.stat()
    assert (info.st_uid, oct(info.st_mode & 0o7777)) == (0, "0o600")
    assert victim.read_text() == "host file\n"


@module_loop
async def test_only_the_service_opens_connections_to_a_session(
    hub: ManagedHub, content: Path
) -> None:
    ready = await new_session(hub, content, "ingress")
    address = await session_address(hub, ready)
    connect = f"import socket; socket.create_connection(({address!r}, 8888), timeout=5)"
    as_service = await asyncio.to_thread(
        subprocess.run, [PYTHON, "-c", connect], capture_output=True, check=False
    )
    assert as_service.returncode == 0  # the hub and the proxy run as the service's uid
    other_user = ["setpriv", "--reuid", "54321", "--regid", "54321", "--clear-groups"]
    stranger = await asyncio.to_thread(
        subprocess.run, [*other_user, PYTHON, "-c", connect], capture_output=True, text=True
    )
    assert stranger.returncode != 0 and "Errno 113" in stranger.stderr  # refused: no route


def test_the_rule_set_blocks_the_metadata_address_and_private_ranges() -> None:
    network = SandboxNetwork()
    network.ensure()
    out = subprocess.run(
        ["nft", "-j", "list", "set", "inet", TABLE, "blocked4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ranges = []
    for item in json.loads(out)["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            if isinstance(element, dict) and "prefix" in element:
                prefix = element["prefix"]
                ranges.append(ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}"))
            elif isinstance(element, dict) and "range" in element:
                low, high = element["range"]
                ranges += ipaddress.summarize_address_range(
                    ipaddress.ip_address(low), ipaddress.ip_address(high)
                )
            elif isinstance(element, str):
                ranges.append(ipaddress.ip_network(element))
    blocked = ["169.254.169.254", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1"]
    for address in blocked:
        assert any(ipaddress.ip_address(address) in net for net in ranges), address
    assert not any(ipaddress.ip_address("203.0.113.80") in net for net in ranges)  # PyPI here


def test_a_session_is_let_reach_its_hub_when_a_stale_element_went_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A session's address was held before by another session, whose late clean-up
    removed its element between ``allow_hub`` reading the set and changing it (a
    disconnect storm on a busy hub did): the new session is still let through."""
    from binderbox.runtime import network as netmod

    network = SandboxNetwork()
    network.ensure()
    sessions, _ = network.ranges()
    address = str(sessions.broadcast_address)  # the pool's last address: rarely leased
    elements = netmod._hub_elements
    assert f"{address} . 2" not in elements()
    monkeypatch.setattr(netmod, "_hub_elements", lambda: [f"{address} . 2"])  # as read
    try:
        network.allow_hub(address, 1)
        assert f"{address} . 1" in elements()
    finally:
        network.forget_hub(address, 1)
    assert f"{address} . 1" not in elements()


def test_the_hub_listens_where_sessions_can_reach_it_and_nowhere_public() -> None:
    hub = ManagedHub(data_dir="/nonexistent", hub_port=8081, proxy_api_port=8001)
    network = SandboxNetwork()
    assert hub.hub_ip == network.gateway
    assert ipaddress.ip_address(hub.hub_ip) in ipaddress.ip_network(network.subnet)
    assert hub.hub_api_url.startswith(f"http://{network.gateway}:8081/")


# -- builds and dataset code sources ------------------------------------------------

MARK_SECONDS = "2.0421"  # a sleep whose command line names the probed process


def probe_script(targets: list[tuple[str, int]], out: str) -> str:
    """A postBuild: the probe into ``out``, then a sleep the host can find."""
    return (
        "#!/bin/bash\nset -e\n"
        f"/srv/env/bin/python - > {out} <<'PROBE'\n{probe_code(targets)}\nPROBE\n"
        f"sleep {MARK_SECONDS}\n"
    )


async def uid_of_marked_process() -> int:
    """The host uid of the running ``sleep MARK_SECONDS`` (bounded wait)."""
    for _ in range(600):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline == f"sleep\0{MARK_SECONDS}\0".encode():
                return host_uid(int(entry.name))
        await asyncio.sleep(0.05)
    raise AssertionError("the probe's process never showed up")


def sandbox_targets(private: NamespaceHost, link_local: NamespaceHost) -> list[tuple[str, int]]:
    hub_port = 8081  # whatever the port: builds reach nothing on the host
    gateway = SandboxNetwork().gateway
    return [
        *host_targets(),
        (gateway, hub_port),
        (private.address, private.port),
        (link_local.address, link_local.port),
    ]


async def test_build_code_reaches_only_the_internet_as_its_own_uid(
    tmp_path: Path, private_host: NamespaceHost, link_local_host: NamespaceHost
) -> None:
    content = tmp_path / "repo"
    content.mkdir()
    script = probe_script(sandbox_targets(private_host, link_local_host), "/srv/env/probe.txt")
    (content / "postBuild").write_text(script)
    builder = PythonBuilder(
        session_packages=[], jupyterhub_version="", cache_dir=str(TEST_CACHE / "uv-isolation")
    )
    spec = EnvSpec(kind="python", postbuild="postBuild", postbuild_text=script, content_digest="d")
    prefix = tmp_path / "env"
    prefix.mkdir()

    async def build() -> None:
        async for _line in builder.build(spec, content, prefix):
            pass

    task = asyncio.create_task(build())
    uid = await uid_of_marked_process()
    await task
    host = SandboxHost()
    assert host.uid_base < uid < host.uid_base + host.uid_count
    out = probe_result((prefix / "probe.txt").read_text())
    assert not [k for k, v in out.items() if v == "open"], out
    assert out["pypi"] == 200
    assert {p.stat().st_uid for p in (prefix, prefix / "probe.txt")} == {os.geteuid()}


async def test_a_dataset_code_source_reaches_only_the_internet_as_its_own_uid(
    tmp_path: Path, private_host: NamespaceHost, link_local_host: NamespaceHost
) -> None:
    env = built_env(session=False)
    dest = tmp_path / "dest"
    dest.mkdir()
    targets = sandbox_targets(private_host, link_local_host)
    code = (
        f"{probe_code(targets)}\nimport subprocess\nsubprocess.run(['sleep', '{MARK_SECONDS}'])\n"
    )
    entry = DataEntry(label="probe", src=code, project_name="probe")
    said: list[str] = []
    ctx = FetchContext(
        emit=lambda event: said.append(event.message),
        limit=1 << 20,
        deadline=time.monotonic() + 300,
    )
    ctx.env_path = env
    fetch_task = asyncio.create_task(CodeFetcher().fetch(entry, dest, ctx))
    uid = await uid_of_marked_process()
    await fetch_task
    host = SandboxHost()
    assert host.uid_base < uid < host.uid_base + host.uid_count
    out = probe_result("\n".join(m.split(": ", 1)[-1] for m in said))
    assert not [k for k, v in out.items() if v == "open"], out
    assert out["pypi"] == 200


HOLD = """
import socket
held, refused = [], 0
for _ in range(60):
    try:
        held.append(socket.create_connection((ADDRESS, PORT), timeout=5))
    except OSError:
        refused += 1
print("PROBE", len(held), refused)
"""


async def test_a_sandbox_cannot_hold_more_connections_than_its_limit(
    private_host: NamespaceHost,
) -> None:
    """A port scan or a flood cannot fill the host's connection table: past
    ``max_connections`` a sandbox's new connections are refused (the host is one the
    operator allowed, so only the limit stands in the way)."""
    host = SandboxHost()
    host.network.max_connections = 20
    host.network.destinations.allowed = [f"{private_host.address}/32"]
    code = HOLD.replace("ADDRESS", repr(private_host.address)).replace(
        "PORT", str(private_host.port)
    )
    lease = host.lease_uid()
    assert lease is not None
    step = Step()
    try:
        lines = [
            line
            async for line in host.run_step(
                base_sandbox([], None), [PYTHON, "-c", code], uid=lease.value, step=step
            )
        ]
    finally:
        lease.release()
        await SandboxHost().ensure_network()  # the machine's table back to the defaults
    assert step.output.code == 0, lines
    assert "PROBE 20 40" in lines


CONNECT = """
import socket
try:
    socket.create_connection((ADDRESS, PORT), timeout=5).close()
    print("CONNECT open")
except OSError as err:
    print("CONNECT", type(err).__name__)
"""

#: another binderbox process on this machine, with other settings: it writes the
#: machine's one table to allow a private host, then exits
OTHER_PROCESS = """
import sys
from binderbox.runtime.network import SandboxNetwork
network = SandboxNetwork()
network.destinations.allowed = [sys.argv[1]]
network.ensure()
"""


async def test_rules_another_process_left_are_replaced_before_a_step_runs(
    private_host: NamespaceHost,
) -> None:
    """The rules are the machine's: when another binderbox process (here one allowing
    the private test host, as an operator's mirror) rewrote them after this one set
    them up, this process's next build step or code source does not run under them."""
    host = SandboxHost()
    await host.ensure_network()  # this process's rules, as after its first build
    allow = f"{private_host.address}/32"
    other = await asyncio.create_subprocess_exec(PYTHON_SELF, "-c", OTHER_PROCESS, allow)
    assert await asyncio.wait_for(other.wait(), 60) == 0
    code = CONNECT.replace("ADDRESS", repr(private_host.address)).replace(
        "PORT", str(private_host.port)
    )
    lease = host.lease_uid()
    assert lease is not None
    try:
        step = Step()
        lines = [
            line
            async for line in host.run_step(
                base_sandbox([], None), [PYTHON, "-c", code], uid=lease.value, step=step
            )
        ]
    finally:
        lease.release()
    assert step.output.code == 0, lines
    said = [line for line in lines if line.startswith("CONNECT ")]
    assert said and said != ["CONNECT open"], lines  # refused, unreachable or timed out
