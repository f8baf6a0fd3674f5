# The emotion service: python -m server on 0.0.0.0:8000, with the shipped classifier and a verified YuNet.
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
WORKDIR /app

# Dependencies and the package first, so code-only changes reuse this layer's wheels.
COPY pyproject.toml README.md ./
COPY server ./server
RUN pip install .

COPY web ./web
COPY models ./models
# YuNet from its pinned opencv_zoo URL, sha256-verified; the build fails rather than ship an unverified file.
RUN python -m server.download

USER app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EMOTION_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "server", "--host", "0.0.0.0"]
