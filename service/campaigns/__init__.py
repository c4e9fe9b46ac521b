"""Campaigns: the marketer's campaign file (``spec``) and the pure decision rules (``rules``)."""
