"""HTTPS: certificates over ACME or the operator's own, a TLS front before the proxy."""

from .certs import CertError, CertStore, order_certificate
from .front import HTTPS, TLSFront

__all__ = ["HTTPS", "CertError", "CertStore", "TLSFront", "order_certificate"]
