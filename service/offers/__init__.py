"""Offer decisioning: from a visit trigger to at most one issued coupon (DESIGN §4)."""
