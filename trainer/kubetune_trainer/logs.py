"""Progress reporting: one JSON object per line in a pod, a progress bar and tables on a terminal.

The operator parses the JSON lines from pod logs, so event and key names are an interface:
  {"event":"phase","phase":"ValidatingData"|"Training"|"Evaluating"}
  {"event":"step","step":s,"totalSteps":t,"loss":x,"lr":..,"etaSeconds":..,"epoch":..,"batchIds":[..]}
  {"event":"checkpoint","step":s,"time":"<RFC 3339>"}
  {"event":"eval","stage":"before"|"baseline"|"after"|"champion","metrics":{..}}
  {"event":"head","init":"linear-probe","pooling":"mean"}   (LP-FT: the head starts as the probe)
Under torchrun only rank 0 emits anything.
  {"event":"result",...TrainResult wire form...}
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolve_format(log_format: str, stream: TextIO) -> str:
    """auto -> json without a TTY (pods), rich on a terminal."""
    if log_format == "auto":
        return "rich" if stream.isatty() else "json"
    return log_format


class EventLog:
    def __init__(self, log_format: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.json = resolve_format(log_format, self.stream) == "json"
        self._bar: Any = None

    def emit(self, event: str, **fields: Any) -> None:
        if self.json:
            self.stream.write(json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n")
            self.stream.flush()

    def say(self, text: str) -> None:
        """Human text: on a terminal only (pods get the structured events)."""
        if not self.json:
            self._write(text)

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def phase(self, phase: str) -> None:
        self.emit("phase", phase=phase)
        self.say(f"== {phase}")

    def step(
        self, step: int, total: int, loss: float, lr: float, eta: float, epoch: float, batch_ids: list[int]
    ) -> None:
        self.emit(
            "step",
            step=step,
            totalSteps=total,
            loss=round(loss, 6),
            lr=lr,
            etaSeconds=round(eta, 1),
            epoch=round(epoch, 4),
            batchIds=batch_ids,
        )
        if not self.json:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total, initial=step - 1, desc="training", file=self.stream, dynamic_ncols=True
                )
            self._bar.set_postfix(loss=f"{loss:.4f}", epoch=f"{epoch:.2f}", refresh=False)
            self._bar.update(1)
            if step >= total:
                self.close_bar()

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def checkpoint(self, step: int, path: str) -> None:
        self.emit("checkpoint", step=step, time=now_rfc3339(), path=path)

    def eval(self, stage: str, metrics: dict[str, Any]) -> None:
        self.emit("eval", stage=stage, metrics=metrics)

    def result(self, wire: dict[str, Any]) -> None:
        self.close_bar()
        self.emit("result", **wire)

    def table(self, rows: list[tuple[str, dict[str, float]]], metric_names: list[str]) -> None:
        """The before / baseline / after comparison, printed on a terminal."""
        if self.json:
            return
        self.close_bar()
        width = max(len(name) for name, _ in rows)
        lines = ["  ".join([" " * width, *(f"{m:>14}" for m in metric_names)])]
        for name, metrics in rows:
            cells = [f"{metrics[m]:>14.4f}" if m in metrics else f"{'-':>14}" for m in metric_names]
            lines.append("  ".join([name.ljust(width), *cells]))
        self._write("\n".join(lines))
