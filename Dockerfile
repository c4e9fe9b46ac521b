# syntax=docker/dockerfile:1
# Build stage: wheels for the project and its pinned dependencies.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY pyproject.toml README.md ./
RUN mkdir -p geofences service \
 && touch geofences/__init__.py service/__init__.py \
 && pip wheel --wheel-dir /wheels . \
 && rm /wheels/geo_offers-*.whl
COPY geofences ./geofences
COPY service ./service
RUN pip wheel --no-deps --wheel-dir /wheels .

# Runtime stage: slim, non-root.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GEO_OFFERS_HOST=0.0.0.0 GEO_OFFERS_PORT=8000 GEO_OFFERS_DATA_DIR=/data \
    PROMETHEUS_MULTIPROC_DIR=/tmp/geo-offers-metrics
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels geo-offers && rm -rf /wheels \
 && useradd --system --uid 10001 --home-dir /data --create-home geooffers
USER geooffers
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
# Workers come from GEO_OFFERS_WORKERS (more than one needs GEO_OFFERS_REDIS_URL). /metrics
# adds up all workers through PROMETHEUS_MULTIPROC_DIR, which must start empty.
CMD ["sh", "-c", "rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && exec geo-offers serve"]
