"""Certificates for binderbox's HTTPS: kept in the data directory, obtained over ACME.

:class:`CertStore` keeps ``<data>/tls/``: the ACME account key (``account.key``) and one
file per domain (``<domain>.pem``) holding the private key *and* the full chain, so a
renewal replaces both in one ``rename``: a reader (the TLS front) never sees a
half-written certificate nor a key that does not match it.  Every file is mode 0600.

:func:`order_certificate` is one ACME order (RFC 8555) with the ``acme`` library certbot
uses: account (made once, found again by its key), order, the HTTP-01 challenges (their
answers handed to ``challenges``, which the HTTP listener serves), finalize, download.
It is blocking (``requests``); callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import cast

from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.errors import Error as JoseError
from josepy.jwk import JWKRSA

from ..errors import BinderboxError


class CertError(BinderboxError):
    """A certificate cannot be obtained or read."""

    reason = "tls"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file beside it, fsync, rename),
    mode 0600 from the start."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


def not_after(pem: bytes) -> datetime.datetime:
    """The expiry (UTC) of the first certificate in ``pem``."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


class CertStore:
    """``<data>/tls/``: the account key and one key+chain PEM per domain."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def cert_path(self, domain: str) -> Path:
        return self.root / f"{domain}.pem"

    def expiry(self, domain: str) -> datetime.datetime | None:
        """When the stored certificate of ``domain`` expires (None: there is none)."""
        path = self.cert_path(domain)
        if not path.exists():
            return None
        try:
            return not_after(path.read_bytes())
        except ValueError as err:
            raise CertError(f"{path} is not a certificate.", log_message=str(err)) from err

    def save(self, domain: str, key_pem: bytes, fullchain_pem: bytes) -> Path:
        """Store a new key and chain for ``domain`` in one atomic replace."""
        path = self.cert_path(domain)
        write_private(path, key_pem + fullchain_pem.rstrip(b"\n") + b"\n")
        return path

    def account_key(self) -> JWKRSA:
        """The ACME account key, made on first use."""
        path = self.root / "account.key"
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            write_private(path, _pem(key))
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        return JWKRSA(key=loaded)


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def order_certificate(
    store: CertStore,
    domain: str,
    directory_url: str,
    *,
    challenges_out: MutableMapping[str, str],
    ca_bundle: str = "",
    email: str = "",
    timeout: float = 90.0,
) -> Path:
    """Obtain a certificate for ``domain`` from the ACME server at ``directory_url`` and
    store it; the path of the stored PEM.  ``challenges_out`` receives each HTTP-01
    answer (its path -> its body) while the server validates it.  Raises
    :class:`CertError` with the server's reason; the stored certificate is then untouched.
    """
    try:
        acme = _client(store, directory_url, ca_bundle, email)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = crypto_util.make_csr(_pem(key), [domain])
        order = acme.new_order(csr)
        answered = _answer_http01(acme, order, challenges_out)
        try:
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
            order = acme.poll_and_finalize(order, deadline=deadline)
        finally:
            for path in answered:
                challenges_out.pop(path, None)
    except (errors.Error, messages.Error, JoseError, OSError, ValueError) as err:
        raise CertError(
            f"The ACME server at {directory_url} did not issue a certificate for {domain}: "
            f"{_reason(err)}",
            log_message=f"ACME order for {domain} failed: {err!r}",
        ) from err
    return store.save(domain, _pem(key), order.fullchain_pem.encode())


def _client(store: CertStore, directory_url: str, ca_bundle: str, email: str) -> client.ClientV2:
    """An ACME client with its account (registered on first use, found again after)."""
    account_key = store.account_key()
    # verify_ssl goes to requests' ``verify``, which also takes a CA bundle's path
    verify = cast(bool, ca_bundle or True)
    net = client.ClientNetwork(account_key, user_agent="binderbox", verify_ssl=verify, timeout=30)
    acme = client.ClientV2(client.ClientV2.get_directory(directory_url, net), net=net)
    registration = messages.NewRegistration.from_data(
        email=email or None, terms_of_service_agreed=True
    )
    try:
        acme.new_account(registration)
    except errors.ConflictError as err:  # this key's account exists already
        found = messages.RegistrationResource(uri=err.location, body=messages.Registration())
        acme.query_registration(found)
    return acme


def _answer_http01(
    acme: client.ClientV2, order: messages.OrderResource, out: MutableMapping[str, str]
) -> list[str]:
    """Publish and answer the HTTP-01 challenge of each pending authorization."""
    answered = []
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue  # the server remembers an earlier validation
        http01 = [c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)]
        if not http01:
            raise CertError(f"The ACME server offers no HTTP-01 challenge for {authz.body}.")
        response, validation = http01[0].response_and_validation(acme.net.key)
        path = http01[0].chall.path
        out[path] = validation
        answered.append(path)
        acme.answer_challenge(http01[0], response)
    return answered


def _reason(err: BaseException) -> str:
    """The server's own words for a failed order, in one line."""
    if isinstance(err, errors.ValidationError):
        details = [
            str(c.error.detail or c.error)
            for authz in err.failed_authzrs
            for c in authz.body.challenges
            if c.error is not None
        ]
        return "; ".join(details) or "validation failed"
    if isinstance(err, messages.Error):
        return str(err.detail or err.typ)
    return str(err) or type(err).__name__
