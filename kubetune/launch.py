"""`kubetune launch -- torchrun ...`: run a multi-process launcher and keep the trainer's exit code.

torchrun exits 1 whenever a worker fails, which would hide the trainer's meaning (3 invalid data,
4 gate failed, 5 model load, 143 preempted) from the Job's podFailurePolicy. Rank 0 writes its
TrainResult to the termination log with a reason prefix; this wrapper maps that prefix back to the
exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from kubetune.api import exitcodes

REASON_PREFIX_CODES = {
    "InvalidData:": exitcodes.INVALID_DATA,
    "InvalidConfig:": exitcodes.INVALID_DATA,
    "ModelLoad:": exitcodes.MODEL_LOAD,
    "GateFailed:": exitcodes.GATE_FAILED,
    "Preempted:": exitcodes.PREEMPTED,
}


def exit_code_for(launcher_code: int, termination_message: str | None) -> int:
    """The trainer's own exit code when the termination message says why it failed.

    >>> exit_code_for(1, '{"reason": "GateFailed: accuracy 0.61 < 0.85"}')
    4
    >>> exit_code_for(0, None), exit_code_for(1, "not json")
    (0, 1)
    """
    if launcher_code == 0 or not termination_message:
        return launcher_code
    try:
        reason = json.loads(termination_message).get("reason") or ""
    except (json.JSONDecodeError, AttributeError):
        return launcher_code
    for prefix, code in REASON_PREFIX_CODES.items():
        if str(reason).startswith(prefix):
            return code
    return launcher_code


def run(command: list[str]) -> int:
    if not command:
        print("kubetune launch: give the launcher command after --", file=sys.stderr)
        return exitcodes.USAGE
    proc = subprocess.Popen(command)
    # Preemption: pass SIGTERM on so rank 0 can checkpoint, then report what it says.
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    code = proc.wait()
    path = Path(os.environ.get("KUBETUNE_TERMINATION_LOG", "/dev/termination-log"))
    message = path.read_text() if path.is_file() else None
    return exit_code_for(code if code >= 0 else 128 - code, message)
