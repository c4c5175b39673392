"""Registry names, credentials and challenges: the parts of a push that are not HTTP.

* :func:`parse_target`: ``host[:port]/repository`` (``--push``'s argument), an optional
  ``https://`` or ``http://`` in front;
* :func:`is_loopback`: plain HTTP is for loopback registries only (127.0.0.0/8, ::1,
  ``localhost``): anything else is refused, whatever the settings say, so credentials and
  layers never cross a network in clear;
* :func:`credentials_for`: a docker-style auth file (``~/.docker/config.json``,
  ``$REGISTRY_AUTH_FILE``, a Kubernetes ``.dockerconfigjson`` Secret): ``{"auths":
  {"<host>": {"auth": base64("user:password")}}}`` or ``"username"``/``"password"``;
  keys may carry a scheme or a path (``https://host/v1/``).  Credential helpers
  (``credsStore``, ``credHelpers``) and identity tokens are not run or used;
* :func:`parse_challenge`: a ``WWW-Authenticate`` header's scheme and parameters
  (the Distribution token spec: ``Bearer realm="...",service="...",scope="..."``).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import BinderboxError

#: Distribution's repository name grammar (distribution/reference), lower case
REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
#: a registry host, with an optional port
HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?"
)
#: a tag (distribution/reference)
TAG = re.compile(r"[\w][\w.-]{0,127}")


class RegistryError(BinderboxError):
    """A registry could not be used: bad settings, unreachable, or it refused a request."""

    status_code = 502
    reason = "registry"


class RegistryUnreachable(RegistryError):
    """No answer from the registry (connection refused, name unknown, TLS failed)."""

    reason = "registry_unreachable"


class RegistryAuthError(RegistryError):
    """The registry (or its token service) refused the credentials, or wants some."""

    reason = "registry_auth"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (no port) is a loopback address or ``localhost``."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host(host: str) -> tuple[str, int | None]:
    """``host[:port]`` -> (host, port or None); IPv6 in brackets."""
    parts = urlsplit(f"//{host}")
    return parts.hostname or host, parts.port


def parse_target(text: str) -> tuple[str | None, str, str]:
    """``[scheme://]host[:port]/repository`` -> (scheme or None, host[:port], repository);
    RegistryError naming what is wrong."""
    scheme = None
    rest = text.strip()
    if "://" in rest:
        scheme, _, rest = rest.partition("://")
        if scheme not in ("http", "https"):
            raise RegistryError(f"The registry {text!r} has an unknown scheme {scheme!r}.")
    host, _, repository = rest.partition("/")
    if not HOST.fullmatch(host):
        raise RegistryError(
            f"{text!r} does not start with a registry host.",
            hint="Give <registry host[:port]>/<repository>, e.g. registry.example.org/binder/envs.",
        )
    check_repository(repository.strip("/"))
    return scheme, host, repository.strip("/")


def check_repository(repository: str) -> str:
    """``repository`` when it is a valid repository name, else RegistryError."""
    if not REPOSITORY.fullmatch(repository):
        raise RegistryError(
            f"{repository!r} is not a valid repository name.",
            hint="Use lower-case path components such as binder/envs.",
        )
    return repository


def _hosts_equal(key: str, host: str) -> bool:
    name = key if "://" in key else f"//{key}"
    return urlsplit(name).netloc.lower() == host.lower()


def credentials_for(host: str, auth_file: Path | None) -> tuple[str, str] | None:
    """(user, password) for ``host`` in the docker-style ``auth_file``; None when the file
    or the host is not there.  RegistryAuthError for a file that is not such a file."""
    if auth_file is None or not auth_file.is_file():
        return None
    try:
        auths = json.loads(auth_file.read_text()).get("auths") or {}
        for key, entry in auths.items():
            if not _hosts_equal(key, host):
                continue
            if entry.get("username"):
                return str(entry["username"]), str(entry.get("password", ""))
            if entry.get("auth"):
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
                if sep:
                    return user, password
    except (OSError, ValueError, AttributeError, UnicodeDecodeError) as err:
        raise RegistryAuthError(
            f"The registry auth file {auth_file} cannot be read.",
            log_message=f"{auth_file}: {err}",
        ) from None
    return None


def basic(credentials: tuple[str, str]) -> str:
    """The ``Authorization`` value of HTTP Basic."""
    user, password = credentials
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """A ``WWW-Authenticate`` value -> (scheme lower case, parameters)."""
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', params))
