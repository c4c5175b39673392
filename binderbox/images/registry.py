"""A client of the Distribution HTTP API (the OCI distribution spec): what a push needs.

* ``HEAD /v2/<name>/blobs/<digest>``: a blob the registry has is not sent again;
* uploads: ``POST /v2/<name>/blobs/uploads/``, then one ``PUT <location>?digest=`` with
  the blob (monolithic), or for blobs over :attr:`RegistryClient.chunk_size` a ``PATCH``
  per chunk (``Content-Range``) and a closing ``PUT``;
* ``PUT /v2/<name>/manifests/<tag>`` (an OCI image manifest), ``HEAD`` the same to ask
  whether the registry has an image (as BinderHub asks before it builds).

Authentication follows the registry's challenge: a ``401`` with ``WWW-Authenticate:
Bearer realm=...,service=...,scope=...`` gets a token from the realm (HTTP Basic with the
credentials when there are some; anonymous otherwise) and the request is sent again
with it; ``Basic`` sends the credentials.  Tokens are kept per scope for the client's
life.  TLS is verified (the system's CAs, or ``ca_file``); plain HTTP only to a loopback
registry (:func:`~binderbox.images.auth.is_loopback`); a token realm over plain HTTP is
refused unless it is on loopback (the realm's host is the registry's choice, as Docker
Hub's auth.docker.io); an upload location elsewhere than the registry itself, or over
another scheme, is refused (the credentials never go there, nor in clear).

Blocking (``http.client``): callers in an event loop run it in a thread.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

from .auth import (
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
    basic,
    is_loopback,
    parse_challenge,
    split_host,
)
from .layout import MANIFEST

#: what a manifest HEAD accepts (OCI and Docker's schema 2)
ACCEPT = ", ".join(
    [
        MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
Response = tuple[int, http.client.HTTPMessage, bytes]


class _Window:
    """``size`` bytes of ``file`` from its current position, read by http.client."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self.file, self.left = file, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.file.read(n)
        self.left -= len(data)
        return data


Body = bytes | BinaryIO | _Window | None


class RegistryClient:
    """One registry (``host[:port]``).  See the module docstring."""

    def __init__(
        self,
        host: str,
        *,
        secure: bool = True,
        credentials: tuple[str, str] | None = None,
        ca_file: str = "",
        timeout: float = 60.0,
        chunk_size: int = 64 << 20,
    ) -> None:
        self.host, self.secure, self.credentials = host, secure, credentials
        self.hostname, self.port = split_host(host)
        if not secure and not is_loopback(self.hostname):
            raise RegistryError(
                f"Plain HTTP to the registry {host} is refused: it is not on loopback.",
                hint="Use HTTPS (ImageRegistry.insecure = False; ca_file for a private CA).",
            )
        self.timeout, self.chunk_size = timeout, chunk_size
        self.context = ssl.create_default_context(cafile=ca_file or None) if secure else None
        self._tokens: dict[str, str] = {}
        #: the digests of blobs sent by this client (the others the registry had)
        self.uploaded: list[str] = []

    # -- HTTP --------------------------------------------------------------------------

    def _connection(self, host: str, port: int | None, secure: bool) -> http.client.HTTPConnection:
        if secure:
            return http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=self.context, blocksize=1 << 20
            )
        return http.client.HTTPConnection(host, port, timeout=self.timeout, blocksize=1 << 20)

    def _send(self, method: str, url: str, headers: dict[str, str], body: Body) -> Response:
        """One request to ``url`` (absolute); OSError and TLS errors -> RegistryUnreachable."""
        parts = urlsplit(url)
        conn = self._connection(parts.hostname or "", parts.port, parts.scheme == "https")
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        except (OSError, http.client.HTTPException) as err:
            raise RegistryUnreachable(
                f"Cannot reach the registry {self.host}: {_why(err)}.",
                hint="Check the registry's address and that it is running.",
                log_message=f"{method} {url}: {err!r}",
            ) from None
        finally:
            conn.close()

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` (``/v2/...``) on this registry."""
        return f"{'https' if self.secure else 'http'}://{self.host}{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        body: Callable[[], Body] | None = None,
    ) -> Response:
        """``method path`` (or an absolute URL on this registry) with the authorization
        ``scope`` needs, answering one challenge; ``body`` makes the body (again, after
        a challenge)."""
        url = path if "://" in path else self.url(path)
        self._same_registry(url)
        sent = dict(headers or {})
        if scope in self._tokens:
            sent["Authorization"] = self._tokens[scope]
        status, answer, data = self._send(method, url, sent, body() if body else None)
        if status != 401:
            return status, answer, data
        self._tokens[scope] = self._authorize(answer.get("WWW-Authenticate", ""), scope)
        sent["Authorization"] = self._tokens[scope]
        status, answer, data = self._send(method, url, sent, body() if body else None)
        if status in (401, 403):
            raise RegistryAuthError(
                f"The registry {self.host} refused the credentials (HTTP {status}).",
                hint="Check the registry auth file (ImageRegistry.auth_file).",
                log_message=f"{method} {url}: {status} {data[:300]!r}",
            )
        return status, answer, data

    def _same_registry(self, url: str) -> None:
        """Refuse ``url`` unless it is this registry, over this registry's own scheme
        (an ``http://`` upload location from an HTTPS registry would carry the
        credentials in clear); ports compare by their effective value."""
        parts = urlsplit(url)
        scheme, default = ("https", 443) if self.secure else ("http", 80)
        where = (parts.scheme, parts.hostname, parts.port or default)
        if where != (scheme, self.hostname, self.port or default):
            raise RegistryError(
                f"The registry {self.host} sent an upload elsewhere"
                f" ({parts.scheme}://{parts.netloc}): refused."
            )

    def _authorize(self, challenge: str, scope: str) -> str:
        """The Authorization value answering ``challenge`` (see the module docstring)."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryAuthError(
                    f"The registry {self.host} wants credentials, and none are configured.",
                    hint="Add them to the registry auth file (ImageRegistry.auth_file).",
                )
            return basic(self.credentials)
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryAuthError(
                f"The registry {self.host} asks for an authentication this client lacks.",
                log_message=f"challenge: {challenge!r}",
            )
        return "Bearer " + self._token(params, scope)

    def _token(self, params: dict[str, str], scope: str) -> str:
        realm = urlsplit(params["realm"])
        if realm.scheme != "https" and not is_loopback(realm.hostname or ""):
            raise RegistryAuthError(
                f"The registry {self.host} sends its token requests to {realm.netloc} over "
                "plain HTTP: refused."
            )
        query = [("service", params["service"])] if params.get("service") else []
        query.append(("scope", scope))
        if self.credentials is not None:
            query.append(("account", self.credentials[0]))
        url = params["realm"] + ("&" if realm.query else "?") + urlencode(query)
        headers = {"Authorization": basic(self.credentials)} if self.credentials else {}
        status, _, data = self._send("GET", url, headers, None)
        if status != 200:
            raise RegistryAuthError(
                f"The registry {self.host}'s token service refused the credentials"
                f" (HTTP {status}).",
                hint="Check the registry auth file (ImageRegistry.auth_file).",
                log_message=f"GET {params['realm']}: {status} {data[:300]!r}",
            )
        try:
            answer = json.loads(data)
            return str(answer.get("token") or answer["access_token"])
        except (ValueError, KeyError, AttributeError):
            raise RegistryAuthError(
                f"The registry {self.host}'s token service sent no token."
            ) from None

    # -- the API -----------------------------------------------------------------------

    def _fail(self, what: str, response: Response) -> RegistryError:
        status, _, data = response
        return RegistryError(
            f"The registry {self.host} refused {what} (HTTP {status}).",
            log_message=f"{what}: {status} {data[:500]!r}",
        )

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether the registry has blob ``digest`` in ``repository``."""
        scope = f"repository:{repository}:pull,push"
        response = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope)
        if response[0] in (200, 404):
            return response[0] == 200
        raise self._fail(f"looking for blob {digest}", response)

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        """The digest of the manifest ``repository:tag``, None when the registry has none."""
        response = self.request(
            "HEAD",
            f"/v2/{repository}/manifests/{tag}",
            scope=f"repository:{repository}:pull",
            headers={"Accept": ACCEPT},
        )
        if response[0] == 404:
            return None
        if response[0] != 200:
            raise self._fail(f"looking for image {repository}:{tag}", response)
        return response[1].get("Docker-Content-Digest") or ""

    def upload_blob(self, repository: str, digest: str, path: Path) -> None:
        """Send the blob file ``path`` (of ``digest``), monolithic or in chunks."""
        scope = f"repository:{repository}:pull,push"
        started = self.request(
            "POST", f"/v2/{repository}/blobs/uploads/", scope=scope, body=lambda: b""
        )
        if started[0] != 202 or not started[1].get("Location"):
            raise self._fail(f"an upload of {digest}", started)
        location = urljoin(self.url("/"), started[1]["Location"])
        size = path.stat().st_size
        with path.open("rb") as blob:
            if self.chunk_size and size > self.chunk_size:
                location = self._chunks(repository, location, blob, size, scope)
                size, body = 0, None
            else:
                body = blob
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            done = self.request(
                "PUT", _with_query(location, digest=digest), scope=scope, headers=headers,
                body=lambda: _rewound(body),
            )  # fmt: skip
        if done[0] != 201:
            raise self._fail(f"the blob {digest}", done)
        self.uploaded.append(digest)

    def _chunks(self, repository: str, location: str, blob: BinaryIO, size: int, scope: str) -> str:
        """PATCH ``blob`` in :attr:`chunk_size` pieces; the location of the closing PUT."""
        offset = 0
        while offset < size:
            length = min(self.chunk_size, size - offset)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                "Content-Range": f"{offset}-{offset + length - 1}",
            }
            start = offset

            def window(start: int = start, length: int = length) -> _Window:
                blob.seek(start)
                return _Window(blob, length)

            response = self.request("PATCH", location, scope=scope, headers=headers, body=window)
            if response[0] != 202 or not response[1].get("Location"):
                raise self._fail(f"a chunk of blob at {offset}", response)
            location = urljoin(self.url("/"), response[1]["Location"])
            offset += length
        return location

    def put_manifest(self, repository: str, tag: str, manifest: bytes) -> str:
        """PUT ``manifest`` (OCI) as ``repository:tag``; the digest the registry gives."""
        response = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{tag}",
            scope=f"repository:{repository}:pull,push",
            headers={"Content-Type": MANIFEST, "Content-Length": str(len(manifest))},
            body=lambda: manifest,
        )
        if response[0] != 201:
            raise self._fail(f"the manifest of {repository}:{tag}", response)
        return response[1].get("Docker-Content-Digest") or ""


def _rewound(body: BinaryIO | None) -> Body:
    if body is not None:
        body.seek(0)
    return body


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params.items()])
    return parts._replace(query=query).geturl()


def _why(err: BaseException) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({err.verify_message})"
    if isinstance(err, ssl.SSLError):
        return f"TLS failed ({err.reason or err})"
    if isinstance(err, socket.gaierror):
        return "its name is unknown"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError | socket.timeout):
        return "no answer in time"
    return str(err) or type(err).__name__
