"""What the command-line entry points share: a user's mistake is one line, not a traceback.

An existing output, a missing or unusable file, a bad band or key: each is raised by srgan with a
message that names the file and the problem. Under :func:`user_errors` such an error ends the
command with that message on one line (exit status 2); ``HYDRA_FULL_ERROR=1`` shows the traceback
as well. Anything else (a bug) keeps Hydra's full report.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any


def _user_error_types() -> tuple[type[BaseException], ...]:
    from srgan.config import ConfigError
    from srgan.data.rasters import RasterError
    from srgan.engine.checkpoint import CheckpointError, ModelError

    # ValueError and KeyError cover the config checks (datasets, degradations, normalisations),
    # which all raise them with the key in the message.
    return (
        FileExistsError,
        FileNotFoundError,
        RasterError,
        ModelError,
        CheckpointError,
        ConfigError,
        ValueError,
        KeyError,
    )


def user_errors(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a Hydra task function so that a user error prints ``<command>: error: <message>``."""

    def wrap(task: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(task)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return task(*args, **kwargs)
            except _user_error_types() as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                message = err.args[0] if isinstance(err, KeyError) and err.args else err
                print(f"{command}: error: {message}", file=sys.stderr)
                sys.exit(2)

        return run

    return wrap
