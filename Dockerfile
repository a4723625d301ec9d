# One image for every Factory Line container: the pillars, the scheduler, the simulator and
# rq-dashboard. docker-compose.yml picks the command; nothing is configured at build time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The optional extras of pyproject.toml installed besides the dependencies (comma-separated):
# `dashboard` is rq-dashboard (and six, which it imports without declaring; docs/operations.md);
# `sim` is the simulated market's server (the compose profile `sim` and the demo).
# `docker compose build --build-arg EXTRAS=dashboard,sim,other` adds more.
ARG EXTRAS=dashboard,sim

# Dependencies first, in a layer of their own: only pyproject.toml (or EXTRAS) changing reinstalls
# them; a change to the code reuses it (tests/integration/test_compose.py checks the order).
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml "$EXTRAS" >/tmp/build/requirements.txt \
    && pip install -r /tmp/build/requirements.txt \
    && rm -rf /tmp/build

# Then the project itself, without touching the dependencies installed above.
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# The simulated market (`python -m sim`, compose profile `sim`) and the demo: the `sim` extra, whose
# dependencies are in EXTRAS above.
COPY sim ./sim
COPY demo ./demo
RUN pip install --no-deps --no-build-isolation . && rm -rf build *.egg-info

COPY docker ./docker

# Not root: a compromised job cannot write outside the app's own folders.
RUN useradd --create-home --uid 10001 factoryline \
    && mkdir -p /app/logs /app/reports /app/NIGHTLY_SCANNER \
    && chown -R factoryline:factoryline /app
USER factoryline

# Every service overrides this; alone the image only checks its own configuration.
CMD ["python", "-m", "services.scheduler", "--check"]
