"""A stand-in container runtime for build pods: no bubblewrap, no user namespace.

What a kubelet gives binderbox's build pod (helm/binderbox/templates/build-job.yaml)
that matters to the build: volumes at their mount paths (emptyDirs, a subPath of the
shared store volume at ``/srv/env``), a non-root uid with every capability dropped and
no new privileges, the image's files.  Here, as root (the runtime's part): a mount
namespace of its own (``unshare --mount``), tmpfs over ``/srv``, ``/home`` and
``/root`` (the image's folders), the project's interpreters (``/root/.pyenv``) shown
again read-only at their path as an image would hold them, the volumes bound at their
paths; then ``setpriv`` to the pod's uid (no groups, no capabilities in any set,
no_new_privs) with only the pod's variables.  The pod's ``/tmp`` and the rest of the
filesystem are the host's (the test's repositories are read from there; the image's
git configuration trusts them: they belong to root).

:class:`StandInPodBuilds` is binderbox's pod-build seam
(:class:`~binderbox.builders.pods.PodBuilds`) with such pods instead of Kubernetes
Jobs: what a build pod does, without an API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from testcache import CACHE

from binderbox.builders.pods import PodBuilds, pod_lines

#: the pod's uid: outside the host's accounts and binderbox's sandbox range
POD_UID = 2_099_000_100
#: the project's interpreters (the test venv's own among them)
PYENV = Path("/root/.pyenv")
#: the binderbox command of the image (this checkout's)
BINDERBOX = str(Path(sys.executable).with_name("binderbox"))
#: uv's package cache of the stand-in pods, kept between runs (owned by the pod uid)
POD_UV_CACHE = CACHE / "pod-uv"


def owned(path: Path, uid: int = POD_UID) -> Path:
    """A folder for a pod volume (an emptyDir): made, owned by the pod's uid."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    return path


class StandInPods:
    """Stand-in pods whose scratch files live under ``root`` (a test's folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stage = root / "stage"
        self.stage.mkdir(parents=True, exist_ok=True)
        self.gitconfig = root / "gitconfig"
        self.gitconfig.write_text("[safe]\n\tdirectory = *\n")
        self.gitconfig.chmod(0o644)
        self.count = 0

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The pod's variables: what an image sets; no bubblewrap to be had."""
        env = {
            "PATH": f"{Path(BINDERBOX).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/home/jovyan",
            "LANG": "C.UTF-8",
            "PYENV_ROOT": str(PYENV),
            "GIT_CONFIG_GLOBAL": str(self.gitconfig),
            "BINDERBOX_BWRAP": "/nonexistent/bwrap",  # a build that used it would fail
        }
        for name in ("SSL_CERT_FILE", "PIP_CERT", "UV_INDEX_URL", "UV_DEFAULT_INDEX"):
            if name in os.environ:
                env[name] = os.environ[name]
        return {**env, **(extra or {})}

    def build_volumes(self, output: Path) -> dict[str, Path]:
        """The build pod's volumes (build-job.yaml): the output, scratch, home; and a
        uv cache kept between runs (a warm node's)."""
        self.count += 1
        pod = self.root / f"pod-{self.count}"
        owned(output)
        return {
            "/srv/env": output,
            "/srv/binderbox": owned(pod / "scratch"),
            "/srv/binderbox/uv-cache": owned(POD_UV_CACHE),
            "/home/jovyan": owned(pod / "home"),
        }

    def argv(
        self, command: Sequence[str], volumes: Mapping[str, Path], env: Mapping[str, str]
    ) -> list[str]:
        """The host command running ``command`` as a pod would (see the module docstring)."""
        stage = shlex.quote(str(self.stage))
        steps = [
            "set -e",
            f"mount --bind {PYENV} {stage}",
            "mount -t tmpfs -o mode=755 image-root /root",
            f"mkdir -p {PYENV}",
            f"mount --bind {stage} {PYENV}",
            f"mount -o remount,bind,ro {PYENV}",
            "mount -t tmpfs -o mode=755 image-srv /srv",
            "mount -t tmpfs -o mode=755 image-home /home",
        ]
        for inside, host in volumes.items():
            inside_q, host_q = shlex.quote(inside), shlex.quote(str(host))
            steps += [f"mkdir -p {inside_q}", f"mount --bind {host_q} {inside_q}"]
        drop = [
            "setpriv",
            f"--reuid={POD_UID}",
            f"--regid={POD_UID}",
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in sorted(env.items())),
            *command,
        ]
        steps.append("exec " + shlex.join(drop))
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(steps)]

    def run(
        self, command: Sequence[str], volumes: Mapping[str, Path], env: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in a stand-in pod to its end; output captured."""
        argv = self.argv(command, volumes, env)
        return subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)

    async def lines(
        self, command: Sequence[str], volumes: Mapping[str, Path], env: Mapping[str, str]
    ) -> AsyncIterator[str]:
        """Run ``command`` in a stand-in pod; its output lines as they come (the pod is
        killed when the caller stops early)."""
        proc = await asyncio.create_subprocess_exec(
            *self.argv(command, volumes, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            limit=1 << 20,
        )
        assert proc.stdout is not None
        try:
            async for raw in proc.stdout:
                yield raw.decode(errors="replace").rstrip("\n")
            await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


class StandInPodBuilds(PodBuilds):
    """Builds in stand-in pods (set :attr:`pods`), not Kubernetes Jobs."""

    pods: StandInPods

    async def run_pod(
        self,
        args: list[str],
        prefix: Path,
        *,
        key: str,
        tokens: Mapping[str, str] | None = None,
    ) -> AsyncIterator[str]:
        assert not tokens, "stand-in pods fetch no private repository"
        command = [BINDERBOX, "build", *args]
        env = self.pods.env({"BINDERBOX_DATA_DIR": "/srv/binderbox"})
        lines = self.pods.lines(command, self.pods.build_volumes(prefix), env)
        async with contextlib.aclosing(lines):
            async for line in pod_lines(lines, key, "stand-in pod"):
                yield line
