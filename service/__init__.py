"""geo-offers HTTP service: FastAPI app, store of record, device state and the CLI."""
