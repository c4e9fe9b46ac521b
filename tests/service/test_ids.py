"""service.ids.uuid5_hex is uuid.uuid5(...).hex for any name (ids already stored must not
change)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from service.ids import uuid5_hex


@given(st.uuids(), st.text())
def test_uuid5_hex_is_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert uuid5_hex(namespace, name) == uuid.uuid5(namespace, name).hex
