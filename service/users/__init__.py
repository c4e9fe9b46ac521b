"""Users: attributes and events sent by the retailer's backend, and erasure."""
