"""Channel credentials and per-call metadata, shared by Client and AsyncClient."""

from __future__ import annotations

import os
import pathlib
from typing import Union

import grpc

#: `tls`: None or False for plaintext; True for TLS with the system's root certificates;
#: grpc.ChannelCredentials as they are; bytes: a CA certificate (PEM) to trust; a str or
#: os.PathLike: the path of a CA certificate (PEM) file to trust.
TLS = Union[bool, grpc.ChannelCredentials, bytes, str, "os.PathLike[str]", None]

Metadata = tuple[tuple[str, str], ...]

#: A PEM document: its bytes, or the path of its file.
PEM = Union[bytes, str, "os.PathLike[str]"]

#: `client_certificate`: (certificate chain, private key) for mTLS, each PEM bytes or a path.
ClientCertificate = Union[tuple[PEM, PEM], None]


def _pem(value: PEM) -> bytes:
    return value if isinstance(value, bytes) else pathlib.Path(value).read_bytes()


def credentials(tls: TLS, client_certificate: ClientCertificate = None) -> grpc.ChannelCredentials | None:
    """The channel credentials for `tls` (see TLS) and an optional client certificate (mTLS,
    which implies TLS), None for plaintext."""
    chain = key = None
    if client_certificate is not None:
        chain, key = _pem(client_certificate[0]), _pem(client_certificate[1])
        if tls is None or tls is False:
            tls = True
    if tls is None or tls is False:
        return None
    if isinstance(tls, grpc.ChannelCredentials):
        if client_certificate is not None:
            raise TypeError("client_certificate needs tls as True, PEM bytes or a path, not credentials")
        return tls
    roots: bytes | None
    if tls is True:
        roots = None
    elif isinstance(tls, bytes):
        roots = tls
    elif isinstance(tls, (str, os.PathLike)):
        roots = pathlib.Path(tls).read_bytes()
    else:
        raise TypeError(f"tls must be a bool, grpc.ChannelCredentials, PEM bytes or a path, not {type(tls).__name__}")
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)


def call_metadata(api_key: str | None) -> Metadata:
    """`authorization: Bearer <key>` on every call when an API key is given."""
    if api_key is None:
        return ()
    if not api_key or any(c in api_key for c in "\r\n"):
        raise ValueError("api_key must be a non-empty single line")
    return (("authorization", f"Bearer {api_key}"),)
