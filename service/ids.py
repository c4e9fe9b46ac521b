"""Name-based ids (UUID version 5) as hex, without building ``uuid.UUID`` objects.

Offer ids and event ids are derived from what they are about, so a retried ping makes the
same ones: the same computation as ``uuid.uuid5(ns, name).hex`` (RFC 4122 §4.3: SHA-1 of
namespace and name, version and variant bits set).
"""

from __future__ import annotations

import hashlib
import uuid


def uuid5_hex(namespace: uuid.UUID, name: str) -> str:
    """``uuid.uuid5(namespace, name).hex``, faster.

    >>> ns = uuid.UUID("0b7f3c52-3c1e-4a7e-8f35-7d8f5d3c9e21")
    >>> uuid5_hex(ns, "device|ping|campaign") == uuid.uuid5(ns, "device|ping|campaign").hex
    True
    """
    raw = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()
