"""Standard Webhooks secrets and signatures (https://www.standardwebhooks.com).

``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with the
endpoint's secret, computed by the ``standardwebhooks`` reference library; during a secret
rotation the header carries both signatures, space-separated, so a receiver verifying with
either secret accepts the message.

>>> secret = new_secret()
>>> secret.startswith("whsec_") and len(secret) == 6 + 44
True
>>> h = signed_headers("evt_1", 1767225600, b'{}', [secret])
>>> sorted(h), h["webhook-signature"].startswith("v1,")
(['webhook-id', 'webhook-signature', 'webhook-timestamp'], True)
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def signed_headers(
    msg_id: str, timestamp: int, body: bytes, secrets_: Sequence[str]
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, signed with every secret given
    (the current one first)."""
    at = datetime.fromtimestamp(timestamp, UTC)
    text = body.decode()
    signature = " ".join(_signer(s).sign(msg_id, at, text) for s in secrets_)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
