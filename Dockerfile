# syntax=docker/dockerfile:1
# The emotion service: emotion-server on 0.0.0.0:8000, with the shipped classifiers and YuNet (sha256-checked).
# Builds with BuildKit (the default of current Docker and of docker compose); nothing is fetched but packages.
FROM python:3.11-slim

# The opencv-python-headless and onnxruntime wheels need only libc, libstdc++ and zlib, all in the slim image,
# so no apt packages (and no libGL: headless OpenCV).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EMOTION_HOST=0.0.0.0 \
    EMOTION_PORT=8000

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app

# 1. Dependencies only, at the versions pinned in requirements.lock (docs/docker.md: how to refresh it). This layer
#    depends on nothing but the lock file, so changes to the code or the models reuse it.
COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock && rm /tmp/requirements.lock

# 2. The package itself, with its models and page as package data (server/models, server/web). The source is
#    bind-mounted for this one step (writable, its writes discarded), so no copy of it stays in the image; no index
#    is needed (the build backend, setuptools, came with the lock).
RUN --mount=type=bind,target=/src,rw \
    pip install --no-deps --no-build-isolation --no-index /src

USER app
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EMOTION_PORT', '8000'), timeout=4)"]
CMD ["emotion-server", "--host", "0.0.0.0"]
