"""CLI: `python -m slm_runtime serve …` and `python -m slm_runtime fetch …`.

Flags are generated from the settings classes, so every flag has its `SLM_*` variable and the
settings stay the single list. Flags win over the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from slm_runtime import __version__
from slm_runtime.integrity import MODEL_CORRUPTED_EXIT, ModelCorruptedError, report_termination, verify_model
from slm_runtime.middleware import JsonLogFormatter
from slm_runtime.settings import ENV_PREFIX, FetchSettings, ServeSettings


def _add_flags(parser: argparse.ArgumentParser, settings_class: type[BaseSettings]) -> None:
    for name, field in settings_class.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        parser.add_argument(
            flag, dest=name, default=argparse.SUPPRESS, metavar="VALUE", help=f"{field.description} [{env}]"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm_runtime", description="SLM inference runtime")
    parser.add_argument("--version", action="version", version=f"slm-runtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_flags(commands.add_parser("serve", help="serve one model (Ollama and OpenAI APIs)"), ServeSettings)
    _add_flags(commands.add_parser("fetch", help="download a model into the cache"), FetchSettings)
    return parser


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _DrainingServer(uvicorn.Server):
    """On SIGTERM: fail /readyz at once, keep serving for the drain delay, then shut down.

    Endpoints and kube-proxy's rules take a moment to drop a terminating pod; a server that
    stopped accepting at once would refuse the requests still routed to it. A second signal
    shuts down at once.
    """

    def __init__(self, config: uvicorn.Config, drain_delay: float) -> None:
        super().__init__(config)
        self.drain_delay = drain_delay
        self._exit_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        app = self.config.app
        state = getattr(app, "state", None)
        runtime = getattr(state, "runtime", None)
        if runtime is not None:
            runtime.draining = True
        if self._exit_timer is None and self.drain_delay > 0:
            logging.getLogger("slm_runtime").info(
                "draining: not ready; serving %.0fs more, then finishing in-flight requests", self.drain_delay
            )
            self._exit_timer = threading.Timer(self.drain_delay, super().handle_exit, (sig, frame))
            self._exit_timer.daemon = True
            self._exit_timer.start()
            return
        super().handle_exit(sig, frame)


def verify(settings: ServeSettings) -> int:
    """Check the model against SLM_MODEL_SHA256 before loading; 0 when it matches (or is not given).

    A mismatch is one line with a stable prefix (`ModelCorrupted: ...`), in the termination message
    (which the operator reads, to fetch the model again) and last on stderr; exit code 3.
    """
    if not settings.model_sha256:
        return 0
    try:
        note = verify_model(settings.model, settings.model_sha256)
    except ModelCorruptedError as exc:
        line = exc.line()
        logging.getLogger("slm_runtime").error(line)
        report_termination(settings.termination_log, line)
        print(line, file=sys.stderr, flush=True)
        return MODEL_CORRUPTED_EXIT
    logging.getLogger("slm_runtime").info("model %s", note)
    return 0


def serve(settings: ServeSettings) -> int:
    from slm_runtime.app import create_app

    configure_logging(settings.log_level)
    failed = verify(settings)
    if failed:
        return failed
    from slm_runtime.server import server_config

    app = create_app(settings)
    _DrainingServer(server_config(app, settings), settings.drain_delay_seconds).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    try:
        if command == "serve":
            return serve(ServeSettings(**args))
        from slm_runtime.fetch import run

        configure_logging("info")
        return run(FetchSettings(**args))
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            print(f"invalid setting {where} ({ENV_PREFIX}{where.upper()}): {error['msg']}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
