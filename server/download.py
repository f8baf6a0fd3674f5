"""``python -m server.download``: fetch the YuNet face detector from opencv_zoo again, pinned and sha256-verified.

The project ships this file in ``models/`` (MIT, see ``models/YUNET.md``); the command restores or refreshes it,
e.g. when the service reports that the copy fails its sha256 check. The download goes to a temporary file next to
the target and is renamed into place only after its hash matches, so an interrupted or tampered download never
leaves a file the server would load.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from server.config import get_settings, resolve_path
from server.detector import YUNET_FILE, YUNET_SHA256, sha256_of

log = logging.getLogger("server.download")

# opencv_zoo commit b6e370b pins the 2023mar YuNet release. opencv_zoo keeps its .onnx files in Git LFS: the
# github.com "raw" address redirects to the LFS store, the media.githubusercontent.com one is that store.
YUNET_COMMIT = "b6e370b10f641879a87890d44e42173077154a05"
YUNET_URLS = (
    f"https://github.com/opencv/opencv_zoo/raw/{YUNET_COMMIT}/models/face_detection_yunet/{YUNET_FILE}",
    f"https://media.githubusercontent.com/media/opencv/opencv_zoo/{YUNET_COMMIT}/models/face_detection_yunet/{YUNET_FILE}",
)
MAX_BYTES = 16 * 1024 * 1024  # the real file is 232,589 bytes; anything far larger is not it


class DownloadError(RuntimeError):
    pass


def _download(url: str, dest: Path, sha256: str, timeout: float) -> None:
    """One attempt: stream ``url`` into a temp file beside ``dest``, verify, then atomically rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        request = urllib.request.Request(url, headers={"User-Agent": "emotion-service-download"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            while block := response.read(1 << 16):
                size += len(block)
                if size > MAX_BYTES:
                    raise DownloadError(f"{url}: more than {MAX_BYTES} bytes, not the expected file")
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256:
            raise DownloadError(f"{url}: sha256 {digest.hexdigest()} ({size} bytes) != expected {sha256}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    dest: Path | str,
    urls: tuple[str, ...] | list[str] = YUNET_URLS,
    sha256: str = YUNET_SHA256,
    *,
    timeout: float = 60.0,
) -> bool:
    """Make ``dest`` hold the file with ``sha256``: True if downloaded, False if it was already there.

    A present file with the right hash is kept; one with a wrong hash is replaced. Each URL is tried in turn;
    ``DownloadError`` if none delivers the expected bytes.
    """
    dest = Path(dest)
    if dest.is_file():
        if sha256_of(dest) == sha256:
            log.info("%s already present (sha256 verified)", dest)
            return False
        log.warning("%s has the wrong sha256; downloading it again", dest)
    errors = []
    for url in urls:
        try:
            log.info("downloading %s", url)
            _download(url, dest, sha256, timeout)
            log.info("saved %s (sha256 verified)", dest)
            return True
        except (OSError, DownloadError) as exc:  # URLError/HTTPError are OSErrors
            errors.append(f"{url}: {exc}")
            log.warning("download failed: %s", exc)
    raise DownloadError("could not fetch a verified copy:\n  " + "\n  ".join(errors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.download", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=resolve_path(get_settings().yunet_path),
        help="where to put the YuNet model (default: the one the service loads, %(default)s; env EMOTION_YUNET_PATH)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        fetch(args.dest, timeout=args.timeout)
    except DownloadError as exc:
        log.error("%s\nWithout a verified YuNet the service falls back to the Haar cascade.", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
