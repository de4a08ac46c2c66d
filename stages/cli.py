"""What every stage's entry point shares: expected errors become one clear line and exit code 1."""
from __future__ import annotations

import sys
from typing import Callable

from stages.data import DataError
from stages.params import ParamsError
from stages.checkpoint import CheckpointError
from stages.trainer import NonFiniteLoss

EXPECTED = (DataError, ParamsError, NonFiniteLoss, CheckpointError)


def run(main: Callable[[], None]) -> None:
    """Call main(); expected errors print `error: <message>` (no traceback) and exit 1; Ctrl-C exits 130."""
    try:
        main()
    except EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: outputs already written are complete; run again to resume", file=sys.stderr)
        sys.exit(130)
