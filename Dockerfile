# One image for every Factory Line container: the pillars, the scheduler, the simulator and
# rq-dashboard. docker-compose.yml picks the command; nothing is configured at build time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so editing code does not reinstall them.
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# The simulated market (`python -m sim`, compose profile `sim`) and the demo: the `sim` extra.
COPY sim ./sim
COPY demo ./demo
# rq-dashboard 0.9.0 imports six without declaring it (see docs/operations.md).
RUN pip install ".[sim]" "rq-dashboard==0.9.0" "six==1.17.0"

COPY docker ./docker

# Not root: a compromised job cannot write outside the app's own folders.
RUN useradd --create-home --uid 10001 factoryline \
    && mkdir -p /app/logs /app/reports /app/NIGHTLY_SCANNER \
    && chown -R factoryline:factoryline /app
USER factoryline

# Every service overrides this; alone the image only checks its own configuration.
CMD ["python", "-m", "services.scheduler", "--check"]
