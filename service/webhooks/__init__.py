"""Webhooks per the Standard Webhooks spec (DESIGN §10)."""
