"""CONNECT intercepted with a configured CA: the proxy answers the client's TLS itself with a
certificate for the target host signed by that CA (which the client trusts), so the HTTPS
requests inside are seen, and ruled, like plain forward-proxy requests."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

log = logging.getLogger("damselfly.proxy")

LEAF_DAYS: Final = 30
CLOSE_POLL: Final = 0.05


class InterceptCA:
    """A CA that mints (and caches) one server certificate per intercepted host."""

    def __init__(self, cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes) -> None:
        self._cert, self._key = cert, key
        self._contexts: dict[str, ssl.SSLContext] = {}

    @classmethod
    def load(cls, path: Path) -> InterceptCA:
        """The CA certificate and its private key from one PEM file. Raises ``ValueError``
        (and ``OSError`` when the file cannot be read)."""
        data = path.read_bytes()
        try:
            cert = x509.load_pem_x509_certificate(data)
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as exc:
            raise ValueError(f"{path}: want a PEM CA certificate and its unencrypted key "
                             f"({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"{path}: the CA key must be RSA or EC")
        return cls(cert, key)

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server TLS context presenting a certificate for ``host``."""
        if host not in self._contexts:
            self._contexts[host] = self._mint(host)
        return self._contexts[host]

    def _mint(self, host: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            name = x509.DNSName(host)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                .issuer_name(self._cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
                .add_extension(x509.SubjectAlternativeName([name]), critical=False)
                .sign(self._key, hashes.SHA256()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # ssl loads a chain only from a file: a private temporary one, gone at once.
        with tempfile.TemporaryDirectory() as folder:
            pem = Path(folder) / "leaf.pem"
            pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            context.load_cert_chain(pem)
        return context


async def intercept(request: web.Request, context: ssl.SSLContext,
                    handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
    """Answer a CONNECT with 200, take the client's TLS with ``context`` and serve the
    requests inside with ``handle`` until the client is done."""
    transport = request.transport
    assert transport is not None
    response = web.StreamResponse(status=200, reason="Connection established")
    response.force_close()
    await response.prepare(request)  # a StreamResponse sends its head at once
    server = web.Server(handle, access_log=None)
    protocol = server()
    try:
        tls = await asyncio.get_running_loop().start_tls(transport, protocol, context,
                                                         server_side=True)
    except OSError as exc:  # ssl.SSLError too: a client that does not trust the CA
        log.info("TLS with the client for %s failed: %r", request.raw_path, exc)
        transport.close()
        return response
    if tls is None:
        return response
    protocol.connection_made(tls)
    try:
        while server.connections:
            await asyncio.sleep(CLOSE_POLL)
    finally:
        await server.shutdown(1.0)
    return response
