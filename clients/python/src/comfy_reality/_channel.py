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


def credentials(tls: TLS) -> grpc.ChannelCredentials | None:
    """The channel credentials for `tls` (see TLS), None for plaintext."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    if isinstance(tls, bytes):
        return grpc.ssl_channel_credentials(root_certificates=tls)
    if isinstance(tls, (str, os.PathLike)):
        return grpc.ssl_channel_credentials(root_certificates=pathlib.Path(tls).read_bytes())
    raise TypeError(f"tls must be a bool, grpc.ChannelCredentials, PEM bytes or a path, not {type(tls).__name__}")


def call_metadata(api_key: str | None) -> Metadata:
    """`authorization: Bearer <key>` on every call when an API key is given."""
    if api_key is None:
        return ()
    if not api_key or any(c in api_key for c in "\r\n"):
        raise ValueError("api_key must be a non-empty single line")
    return (("authorization", f"Bearer {api_key}"),)
