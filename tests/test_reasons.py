"""The one Reason vocabulary: every code explained once, with its DESIGN §4 step."""

from __future__ import annotations

from service.reasons import EXPLAINED, Reason


def test_every_reason_has_its_step_and_words() -> None:
    assert set(EXPLAINED) == set(Reason)
    for reason, (step, name, words) in EXPLAINED.items():
        assert 1 <= step <= 11 and name and words, reason
