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

``HandshakeRefusals`` accounts for the handshakes the server refuses (an
anonymous client where a certificate is required, a retired profile, plain
DICOM on the TLS port): a count per reason for /metrics, and one log line per
refusal, at most ``LOG_BURST`` lines per ``LOG_WINDOW`` seconds, the rest
summed up in one line when the window ends.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "BCP195_TLS12_CIPHERS",
    "REFUSAL_REASONS",
    "HandshakeRefusals",
    "TlsSettings",
    "client_ssl_context",
    "refusal_reason",
    "server_ssl_context",
]

log = logging.getLogger("fastscp.tls")

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


# Why a handshake was refused, as a /metrics label: a short fixed set, so a
# hostile client cannot grow the label space. OpenSSL's own reason is logged.
REFUSAL_REASONS = ("no_client_certificate", "client_certificate_rejected", "protocol_version",
                   "no_shared_cipher", "not_tls", "timeout", "connection_closed", "tls_error")
_BY_OPENSSL_REASON = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_certificate",
    "CERTIFICATE_VERIFY_FAILED": "client_certificate_rejected",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "WRONG_SSL_VERSION": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_CIPHERS_AVAILABLE": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "WRONG_VERSION_NUMBER": "not_tls",
    "HTTP_REQUEST": "not_tls",
    "HTTPS_PROXY_REQUEST": "not_tls",
    "UNKNOWN_PROTOCOL": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "RECORD_LENGTH_MISMATCH": "not_tls",
}
_SAID = {
    "no_client_certificate": "no client certificate",
    "client_certificate_rejected": "client certificate rejected",
    "protocol_version": "TLS version refused",
    "no_shared_cipher": "no shared cipher suite",
    "not_tls": "not TLS (plain DICOM on the TLS port?)",
    "timeout": "handshake timed out",
    "connection_closed": "connection closed during the handshake",
    "tls_error": "TLS error",
}
LOG_BURST = 10  # refusal lines per window
LOG_WINDOW = 60.0  # seconds


def refusal_reason(exc: BaseException) -> tuple[str, str]:
    """(label, detail) for a failed server handshake: one of
    ``REFUSAL_REASONS`` and the words for the log line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "client_certificate_rejected", getattr(exc, "verify_message", None) or str(exc)
    if isinstance(exc, ssl.SSLError):
        why = exc.reason or type(exc).__name__
        return _BY_OPENSSL_REASON.get(why, "tls_error"), why
    if isinstance(exc, TimeoutError) or (isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)):
        return "timeout", "no handshake within the time allowed"  # the loop's handshake timeout aborts
    if isinstance(exc, (ConnectionError, EOFError, OSError)):
        return "connection_closed", str(exc) or type(exc).__name__
    return "tls_error", f"{type(exc).__name__}: {exc}"


class HandshakeRefusals:
    """Counts (``counts``, by reason) and logs refused TLS handshakes, on the
    event loop. ``schedule(delay, fn)`` runs ``fn`` later (the loop's
    ``call_later``): the line that sums up what the rate limit held back."""

    def __init__(self, schedule: Callable[[float, Callable[[], None]], object] | None = None,
                 clock: Callable[[], float] = time.monotonic, burst: int = LOG_BURST,
                 window: float = LOG_WINDOW) -> None:
        self.counts: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self.schedule = schedule
        self.clock = clock
        self.burst = burst
        self.window = window
        self._window_start = -window
        self._logged = 0
        self._held: dict[str, int] = {}
        self._flush_pending = False

    def refused(self, peer: str, exc: BaseException) -> None:
        label, detail = refusal_reason(exc)
        self.counts[label] += 1
        now = self.clock()
        if now - self._window_start >= self.window:
            self.flush()
            self._window_start, self._logged = now, 0
        if self._logged < self.burst:
            self._logged += 1
            log.warning("TLS handshake refused: peer %s: %s (%s)", peer, _SAID[label], detail)
            return
        self._held[label] = self._held.get(label, 0) + 1
        if not self._flush_pending and self.schedule is not None:
            self._flush_pending = True
            self.schedule(max(self._window_start + self.window - now, 0.0), self.flush)

    def flush(self) -> None:
        """Log the refusals the limit held back, in one line."""
        self._flush_pending = False
        if self._held:
            total = sum(self._held.values())
            what = ", ".join(f"{n} {_SAID[label]}" for label, n in sorted(self._held.items()))
            log.warning("TLS handshake refused %d more time(s) in %.0f s, not logged one by one: %s",
                        total, self.window, what)
            self._held.clear()
