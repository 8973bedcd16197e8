"""TLS contexts for DICOM over TLS (PS3.15 Annex B, BCP 195 profiles).

PS3.15 B.12/B.13 (BCP 195, RFC 8996 and RFC 9325) ask for TLS 1.2 or newer,
never TLS 1.0/1.1 or SSL, and, for TLS 1.2, cipher suites with forward secrecy
and authenticated encryption: ECDHE with AES-GCM (the suites the profile and
dcmtk's default "BCP 195" profile propose) and ChaCha20-Poly1305, which RFC
9325 also recommends. DHE suites are left out because B.13 forbids them where
the DH key length cannot be set explicitly, and CBC/RSA-key-exchange suites
because BCP 195 forbids or discourages them. TLS 1.3 suites are all AEAD and
OpenSSL's defaults are exactly the ones the profile permits, so they stay.

Compression (CRIME) and renegotiation are off. The server picks the suite
(its preference order is the list below, strongest-first within AES-GCM).
"""

from __future__ import annotations

import os
import ssl
from typing import Protocol

__all__ = ["BCP195_TLS12_CIPHERS", "TlsSettings", "client_ssl_context", "server_ssl_context"]

# OpenSSL names of the TLS 1.2 suites allowed (IANA names in comments).
BCP195_TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    "ECDHE-RSA-AES128-GCM-SHA256",  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    "ECDHE-ECDSA-AES256-GCM-SHA384",  # TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    "ECDHE-RSA-AES256-GCM-SHA384",  # TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    "ECDHE-ECDSA-CHACHA20-POLY1305",  # TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    "ECDHE-RSA-CHACHA20-POLY1305",  # TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
))


class TlsSettings(Protocol):
    """What server_ssl_context needs; fastscp.config.TlsConfig has it."""

    @property
    def certificate(self) -> str | None: ...
    @property
    def key(self) -> str | None: ...
    @property
    def ca_bundle(self) -> str | None: ...
    @property
    def require_client_certificate(self) -> bool: ...


def _apply_profile(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_SINGLE_ECDH_USE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """Server context: our certificate and key; with a CA bundle, client
    certificates are requested and verified against it, and required when
    ``require_client_certificate`` is set. Raises OSError/ssl.SSLError for
    unreadable or mismatched files, ValueError for an incomplete setting."""
    if not tls.certificate or not tls.key:
        raise ValueError("a TLS server needs a certificate and a key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_profile(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(os.fspath(tls.certificate), os.fspath(tls.key))
    if tls.ca_bundle:
        ctx.load_verify_locations(cafile=os.fspath(tls.ca_bundle))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    elif tls.require_client_certificate:
        raise ValueError("require_client_certificate needs a CA bundle to verify clients against")
    return ctx


def client_ssl_context(
    ca_bundle: str | os.PathLike[str] | None = None,
    certificate: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    check_hostname: bool = False,
) -> ssl.SSLContext:
    """Client context for ``fastscp echo/send --tls`` (pass it to pynetdicom
    as ``tls_args=(ctx, server_hostname)``).

    The server certificate is verified against ``ca_bundle`` (or the system
    store) unless ``verify`` is False. Host names are not checked by default:
    DICOM nodes are usually configured by IP address and their certificates
    rarely name it; trust comes from the CA (as with dcmtk's tools). Give
    ``certificate``/``key`` when the server requires a client certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_profile(ctx)
    if verify:
        ctx.check_hostname = check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca_bundle:
            ctx.load_verify_locations(cafile=os.fspath(ca_bundle))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certificate:
        ctx.load_cert_chain(os.fspath(certificate), os.fspath(key) if key else None)
    return ctx
