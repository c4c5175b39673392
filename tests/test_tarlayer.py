"""Image layers from host trees (binderbox/images/tarlayer.py): what a tree's owner can
and cannot get into a layer.  The trees layered are environments that repository code
built, so their owner is untrusted: a file swapped after the listing for a link to
another host file must not carry that file into an image that is then pushed."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from binderbox.images.tarlayer import tree_entries, write_layer


def members(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}


def make_tree(root: Path) -> Path:
    env = root / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "tool").write_text("#!/bin/sh\n")
    (env / "bin" / "tool").chmod(0o4777)  # set-uid and writable by anyone
    (env / "shared").mkdir()
    (env / "shared").chmod(0o3777)
    (env / "data.txt").write_text("public")
    return env


def test_layer_keeps_content_and_drops_setid_sticky_and_group_other_write_bits(
    tmp_path: Path,
) -> None:
    env = make_tree(tmp_path)
    out = io.BytesIO()
    write_layer(tree_entries(env, "srv/env"), out)
    found = members(out.getvalue())
    assert found["srv/env/bin/tool"].mode == 0o755
    assert found["srv/env/shared"].mode == 0o755
    assert found["srv/env/data.txt"].mode == 0o644
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as tar:
        data = tar.extractfile("srv/env/data.txt")
        assert data is not None and data.read() == b"public"


@pytest.mark.parametrize("swap", ["symlink", "hardlink"])
def test_a_file_swapped_after_the_listing_for_another_host_file_is_refused(
    tmp_path: Path, swap: str
) -> None:
    env = make_tree(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    entries = list(tree_entries(env, "srv/env"))
    (env / "data.txt").unlink()
    if swap == "symlink":
        (env / "data.txt").symlink_to(secret)
    else:
        os.link(secret, env / "data.txt")
    out = io.BytesIO()
    with pytest.raises(OSError):
        write_layer(entries, out)
