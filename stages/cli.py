"""What every stage's entry point shares: expected errors become one clear line and exit code 1."""
from __future__ import annotations

import signal
import sys
from typing import Callable

from stages.data import DataError
from stages.params import ParamsError
from stages.checkpoint import CheckpointError
from stages.trainer import NonFiniteLoss

EXPECTED = (DataError, ParamsError, NonFiniteLoss, CheckpointError)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: temporary files are removed on the way out


def run(main: Callable[[], None]) -> None:
    """Call main(); expected errors print `error: <message>` (no traceback) and exit 1; Ctrl-C or SIGTERM
    exit 130 after cleanup. Outputs are written atomically, so an interrupted stage leaves no partial file."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: outputs already written are complete; run again to resume", file=sys.stderr)
        sys.exit(130)
