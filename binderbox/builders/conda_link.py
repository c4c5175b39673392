"""Run inside the build sandbox: rattler installs downloaded conda archives into a prefix.

This file is a script, not imported by binderbox: :class:`CondaBuilder` runs it
with the service's own interpreter (a readable copy) as the builder uid in
the build sandbox, ``python -I conda_link.py PLAN``.  ``PLAN`` is a JSON file
the service wrote::

    {"rattler": folder holding the rattler package,
     "archives": [{"path": archive inside the sandbox, "url": where it came from,
                   "channel": its channel}, ...],
     "target": the environment's path here, "prefix": the path it is used at
     (/srv/env), "cache": rattler's package cache, "hard_links": bool,
     "specs": the requested match specs}

Every archive's paths are checked first (:func:`_check_paths`).  No link
scripts run (``execute_link_scripts=False``).  The package records in
``conda-meta/`` get the URL and channel each archive was downloaded from, as
a conda or pixi install writes them (rattler saw only the local copy).
"""

import asyncio
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any

#: the exit status of an archive whose paths would leave its environment
UNSAFE = 3


def _check_paths(rattler: Any, archive: str) -> None:
    """Exit when an archive's ``info/paths.json`` names a path outside the environment
    (absolute, ``..``) or one inside a link the same package ships: rattler would
    write through it (into the shared package cache, or anywhere the sandbox can)."""
    entries = rattler.package.PathsJson.from_package_archive(archive).paths
    paths = [PurePosixPath(str(entry.relative_path)) for entry in entries]
    links = {path for path, entry in zip(paths, entries, strict=True) if entry.path_type.softlink}
    for path in paths:
        if path.is_absolute() or ".." in path.parts or links.intersection(path.parents):
            name = Path(archive).name
            print(f"binderbox: the conda package {name} writes outside its place: {path}")
            sys.exit(UNSAFE)


def _config(rattler: Any, hard_links: bool) -> Any:
    toml = 'run-post-link-scripts = "false"\n'
    if not hard_links:
        toml += "allow-hard-links = false\nallow-ref-links = false\n"
    return rattler.Config.from_toml(toml)


async def _install(plan: dict[str, Any]) -> int:
    sys.path.insert(0, plan["rattler"])
    import rattler
    import rattler.package

    for archive in plan["archives"]:
        _check_paths(rattler, archive["path"])
    records = [
        await rattler.RepoDataRecord.from_package_archive(a["path"]) for a in plan["archives"]
    ]
    await rattler.install(
        records,
        target_prefix=plan["target"],
        alternative_target_prefix=plan["prefix"],
        cache_dir=Path(plan["cache"]),
        execute_link_scripts=False,
        show_progress=False,
        config=_config(rattler, plan["hard_links"]),
    )
    origins = {Path(a["path"]).name: a for a in plan["archives"]}
    for meta in (Path(plan["target"]) / "conda-meta").glob("*.json"):
        record = json.loads(meta.read_text())
        origin = origins.get(Path(str(record.get("url", ""))).name)
        if origin is not None:
            record.update(url=origin["url"], channel=origin["channel"], fn=origin["fn"])
            meta.write_text(json.dumps(record, indent=1))
    _seed(Path(plan["target"]), plan["seed"])
    return len(records)


def _seed(target: Path, files: dict[str, str]) -> None:
    """binderbox's own files, before any repository code (JupyterLab's overrides are
    not replaced when a package brought its own)."""
    for name, text in files.items():
        path = target / name
        if path.name == "overrides.json" and path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def main() -> None:
    with Path(sys.argv[1]).open() as handle:
        plan = json.load(handle)
    count = asyncio.run(_install(plan))
    print(f"Linked {count} conda packages into {plan['prefix']}")


if __name__ == "__main__":
    main()
