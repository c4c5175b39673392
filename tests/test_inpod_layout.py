"""What a build step needs in a pod without mounts (binderbox/runtime/inpod.py), and the
refusal of a build Job template that is not unprivileged (binderbox/builders/kube.py).
No processes, no API: the rules themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from binderbox.builders.kube import KubernetesBuilds, check_unprivileged
from binderbox.errors import BuildError
from binderbox.runtime.inpod import direct_command
from binderbox.runtime.sandbox import Sandbox


def test_tools_are_reached_at_their_host_paths(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    uv = tmp_path / "uv"
    uv.write_text("")
    box = Sandbox(cwd=str(home)).ro_bind(uv, "/run/binderbox/uv").bind(home)
    box.bind(tmp_path / "cache", "/run/binderbox/uv-cache")
    box.setenv({"UV_CACHE_DIR": "/run/binderbox/uv-cache", "PATH": "/usr/bin"})
    argv = direct_command(box, ["/run/binderbox/uv", "pip", "--cache-dir=/run/binderbox/uv-cache"])
    assert argv[:5] == ["/usr/bin/env", "-i", "-C", str(home), "--"]
    assert f"UV_CACHE_DIR={tmp_path / 'cache'}" in argv and "PATH=/usr/bin" in argv
    assert argv[-3:] == [str(uv), "pip", f"--cache-dir={tmp_path / 'cache'}"]


def test_a_mount_not_in_place_is_refused_plainly(tmp_path: Path) -> None:
    box = Sandbox(cwd="/").bind(tmp_path, "/srv/env")
    with pytest.raises(BuildError, match=rf"needs {tmp_path} at /srv/env"):
        direct_command(box, ["true"])
    layered = Sandbox(cwd="/").ro_overlay(["/usr", str(tmp_path)], "/usr")
    with pytest.raises(BuildError, match=r"system packages \(apt.txt\)"):
        direct_command(layered, ["true"])


BUILD = {
    "name": "build",
    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
}
SECRET_KEY = {"secretKeyRef": {"name": "registry", "key": "password"}}
UNPRIVILEGED = {
    "automountServiceAccountToken": False,
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
    "containers": [BUILD],
    "volumes": [{"name": "tmp", "emptyDir": {}}],
}


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"automountServiceAccountToken": True}, "service account token"),
        ({"hostNetwork": True}, "hostNetwork is set"),
        ({"volumes": [{"name": "d", "hostPath": {"path": "/var/run"}}]}, "host path"),
        ({"securityContext": {"runAsUser": 0}}, "may run as root"),
        ({"volumes": [{"name": "s", "secret": {"secretName": "registry"}}]}, "mounts a Secret"),
        ({"volumes": [{"name": "p", "projected": {"sources": []}}]}, "mounts a Secret"),
        (
            {"containers": [{**BUILD, "env": [{"name": "T", "valueFrom": SECRET_KEY}]}]},
            "build reads a Secret",
        ),
        (
            {"containers": [{**BUILD, "envFrom": [{"secretRef": {"name": "registry"}}]}]},
            "build reads a Secret",
        ),
    ],
)
def test_a_privileged_build_template_is_refused(
    change: dict[str, object], said: str, tmp_path: Path
) -> None:
    check_unprivileged(UNPRIVILEGED)  # the reference passes
    pod = {**UNPRIVILEGED, **change}
    with pytest.raises(BuildError, match=said):
        check_unprivileged(pod)
    template = tmp_path / "job.yaml"
    job = {"metadata": {}, "spec": {"template": {"spec": pod}}}
    template.write_text(yaml.safe_dump(job))
    builds = KubernetesBuilds(job_template=str(template))
    with pytest.raises(BuildError, match="not unprivileged"):
        builds.job_for(["gh/o/r/" + "a" * 40], tmp_path / "tmp" / "k.x", "k")
