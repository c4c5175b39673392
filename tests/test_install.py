"""scripts/install, run twice as root into a temporary root (``--root``), and the cloud-init
example: the unit that ``systemd-analyze verify`` accepts, the system user, the folders'
owners and modes, the operator's config kept on the upgrade."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER = "binderbox-test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="scripts/install runs as root")


def _install(root: Path) -> str:
    done = subprocess.run(
        [
            str(ROOT / "scripts" / "install"),
            "--root",
            str(root),
            "--user",
            USER,
            "--domain",
            "binder.example.org",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _owner_mode(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return (
        pwd.getpwuid(st.st_uid).pw_name,
        grp.getgrgid(st.st_gid).gr_name,
        stat.S_IMODE(st.st_mode),
    )


def test_install_twice_into_a_temporary_root(tmp_path: Path) -> None:
    created = subprocess.run(["getent", "passwd", USER], capture_output=True).returncode != 0
    root = tmp_path / "root"
    try:
        first = _install(root)
        assert "install: installed" in first and "systemctl" in first
        config = root / "etc/binderbox/binderbox_config.py"
        config.write_text(config.read_text() + "c.ManagedHub.cull_timeout = 123\n")
        second = _install(root)
        assert "upgraded" in second and "keeping" in second
        assert "cull_timeout = 123" in config.read_text()

        user = pwd.getpwnam(USER)
        assert user.pw_shell == "/usr/sbin/nologin" and user.pw_uid < 1000
        assert _owner_mode(root / "etc/binderbox") == ("root", USER, 0o750)
        assert _owner_mode(config) == ("root", USER, 0o640)
        assert _owner_mode(root / "var/lib/binderbox") == ("root", "root", 0o750)
        binderbox = root / "opt/binderbox/.venv/bin/binderbox"
        assert (
            subprocess.run([str(binderbox), "serve", "--help"], capture_output=True).returncode == 0
        )

        unit = root / "etc/systemd/system/binderbox.service"
        text = unit.read_text()
        assert "--config /etc/binderbox/binderbox_config.py" in text
        assert "--domain binder.example.org" in text and "KillSignal=SIGHUP" in text
        # verify resolves the unit's dependencies (sysinit.target...) under --root: the host's
        (root / "usr/lib/systemd").mkdir(parents=True)
        (root / "usr/lib/systemd/system").symlink_to("/usr/lib/systemd/system")
        verify = subprocess.run(
            [
                "systemd-analyze",
                "verify",
                f"--root={root}",
                "/etc/systemd/system/binderbox.service",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "binderbox.service" not in verify.stderr, verify.stderr
    finally:
        if created and shutil.which("userdel"):
            subprocess.run(["userdel", USER], check=False)


def test_cloud_init_example_is_valid() -> None:
    done = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(ROOT / "deploy" / "cloud-init.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config" in done.stdout
