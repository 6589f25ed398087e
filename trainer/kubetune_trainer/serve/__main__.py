"""`python -m kubetune_trainer.serve -f serve-config.yaml` (the same as `kubetune serve -f ...`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubetune.api.loading import ConfigError
from kubetune_trainer.serve.config import load_serve_config
from kubetune_trainer.serve.main import run_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_trainer.serve")
    parser.add_argument("-f", "--file", required=True, help="ServeConfig YAML")
    parser.add_argument("--port", type=int, default=None, help="override port")
    args = parser.parse_args(argv)
    try:
        config = load_serve_config(Path(args.file))
    except ConfigError as err:
        print(f"kubetune serve: {err}", file=sys.stderr)
        return 2
    if args.port is not None:
        config = config.model_copy(update={"port": args.port})
    return run_serve(config)


if __name__ == "__main__":
    sys.exit(main())
