"""``python -m server`` / ``emotion-server``: run the service with uvicorn."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from server.config import Settings


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="emotion-server", description="Run the facial-emotion service.")
    parser.add_argument("--host", default=defaults.host, help="bind address (env EMOTION_HOST, default %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="port (env EMOTION_PORT, default %(default)s)")
    parser.add_argument("--log-level", default=defaults.log_level, help="(env EMOTION_LOG_LEVEL)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    # Workers are threads inside one process (the app's CPU pool): the model is loaded once and shared.
    # uvicorn buffers a whole WebSocket message before the app sees it: cap that at the app's own frame limit
    # (+1 so the app, not uvicorn, answers an oversize frame, with its 1009 close and message).
    uvicorn.run(
        "server.app:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        ws_max_size=defaults.ws_max_frame_bytes + 1,
    )


if __name__ == "__main__":
    main()
