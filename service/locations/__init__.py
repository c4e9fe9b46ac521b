"""The ping path: POST /v1/locations and /v1/locations/batch."""
