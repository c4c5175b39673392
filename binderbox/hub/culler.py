"""The idle culler: jupyterhub-idle-culler's ``cull_idle``, run in two passes.

``python -m binderbox.hub.culler`` is the hub's external ``idle-culler`` service
(:class:`~binderbox.hub.process.ManagedHub` runs it as its ``culler`` child).
Every ``--every`` seconds it runs the field's culler (``jupyterhub_idle_culler.cull_idle``)
twice, each pass with a token of its own whose scopes say what it may see and do
(:mod:`binderbox.hub.config`):

* **temporary users** (``idle-culler``: its scopes are filtered to the hub group
  :data:`~binderbox.sessions.identity.TEMPORARY_GROUP`, so it sees no one else):
  default servers idle for ``--temporary-timeout`` (or older than
  ``--temporary-max-age``) are stopped and their users deleted (``cull_users``),
  as every Binder does;
* **logged-in users' named servers** (``idle-culler-named``: no ``admin:users``,
  so it cannot delete a user even by mistake): named servers idle for
  ``--named-timeout`` (or older than ``--named-max-age``) are stopped and removed
  from the hub (their slot freed); the users and their persistent homes stay.

Activity is what the hub knows: the proxy's traffic and the single-user server's
own reports, which count kernel messages and, through the
:mod:`binderbox.sessions.serverext.binderbox_busy_activity` extension every
session loads, a kernel that is busy (a long cell that prints nothing keeps its
server alive).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from jupyterhub_idle_culler import cull_idle

#: environment variables carrying the two passes' hub API tokens
TEMPORARY_TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
NAMED_TOKEN_ENV = "BINDERBOX_NAMED_CULLER_TOKEN"

log = logging.getLogger("binderbox.culler")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m binderbox.hub.culler")
    parser.add_argument("--url", required=True, help="the hub API URL")
    parser.add_argument("--every", type=float, default=0, help="seconds between passes")
    parser.add_argument("--temporary-timeout", type=int, default=600)
    parser.add_argument("--temporary-max-age", type=int, default=0)
    parser.add_argument("--named-timeout", type=int, default=0, help="0: never culled")
    parser.add_argument("--named-max-age", type=int, default=0)
    return parser


async def cull_once(args: argparse.Namespace) -> None:
    """One run of both passes (a pass that fails is logged; the next run tries again)."""
    passes = [
        (
            os.environ.get(TEMPORARY_TOKEN_ENV, ""),
            args.temporary_timeout,
            {"cull_users": True, "cull_named_servers": False, "max_age": args.temporary_max_age},
        )
    ]
    if args.named_timeout or args.named_max_age:
        named = {
            "cull_default_servers": False,
            "remove_named_servers": True,
            "max_age": args.named_max_age,
        }
        timeout = args.named_timeout or 10 * 365 * 86400  # max age only
        passes.append((os.environ.get(NAMED_TOKEN_ENV, ""), timeout, named))
    for token, timeout, options in passes:
        try:
            await cull_idle(args.url, token, timeout, log, **options)
        except Exception as err:  # the hub restarting, say
            log.warning("idle culler pass failed: %s", err)


async def main(argv: list[str] | None = None) -> None:
    """Cull forever, every ``--every`` seconds (default: half the shortest timeout)."""
    args = _parser().parse_args(argv)
    timeouts = [t for t in (args.temporary_timeout, args.named_timeout) if t]
    every = args.every or max(1.0, min(timeouts or [600]) / 2)
    while True:
        await cull_once(args)
        await asyncio.sleep(every)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[culler %(levelname)s] %(message)s")
    asyncio.run(main())
