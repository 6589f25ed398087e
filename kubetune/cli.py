"""The one `kubetune` command. Thin: parses arguments and calls into api / operator / trainer.

Heavy imports (torch, kopf) happen inside subcommands so the operator image needs no torch and
`kubetune crds` needs neither.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2


def _cmd_crds(args: argparse.Namespace) -> int:
    from kubetune.api.crddocs import reference
    from kubetune.api.crdgen import all_crds, render

    out = Path(args.out)
    crds = all_crds()
    files = {out / name: render(crd) for name, crd in crds.items()}
    files[Path(args.docs)] = reference(crds)
    stale = []
    for path, text in files.items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run `kubetune crds`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


def _cmd_operator(args: argparse.Namespace) -> int:
    if args.standalone and (args.peering is not None or args.priority is not None):
        print(
            "kubetune operator: --peering/--priority join Kopf peering; --standalone runs without it",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from kubetune_operator.main import run

    flags = {
        "trainer_image": args.trainer_image,
        "server_image": args.server_image,
        "peering_name": args.peering,
        "peering_priority": args.priority,
    }
    overrides = {field: value for field, value in flags.items() if value is not None}
    return run(args.namespace, args.all_namespaces, args.standalone, overrides)


def _load_train_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from kubetune.api.loading import load_train_config, parse_mounts

    return load_train_config(
        Path(args.file),
        pvc_mounts=parse_mounts(args.pvc or [], "--pvc"),
        configmap_mounts=parse_mounts(args.configmap or [], "--configmap"),
        cache_dir=args.cache_dir,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from kubetune_trainer.entrypoint import run_train

    return run_train(_load_train_config(args), log_format=args.log_format)


def _cmd_validate_data(args: argparse.Namespace) -> int:
    from kubetune_trainer.entrypoint import run_validate

    return run_validate(_load_train_config(args), log_format=args.log_format)


def _cmd_serve(args: argparse.Namespace) -> int:
    from kubetune_trainer.serve.config import load_serve_config
    from kubetune_trainer.serve.main import run_serve
    from pydantic import ValidationError

    from kubetune.api.loading import ConfigError, format_validation_error

    config = load_serve_config(Path(args.file))
    flags = (("host", args.host), ("port", args.port), ("max_body_bytes", args.max_body_bytes))
    overrides = {k: v for k, v in flags if v is not None}
    try:  # validated again: a flag gets the same bounds as the file's field
        config = type(config).model_validate({**config.model_dump(), **overrides})
    except ValidationError as err:
        raise ConfigError(f"kubetune serve flags: {format_validation_error(err)}") from None
    return run_serve(config)


def _serve_fields_help() -> str | None:
    try:
        from kubetune_trainer.serve.confighelp import serve_config_help
    except ImportError:  # an operator-only install has no server
        return None
    return serve_config_help()


def _cmd_launch(args: argparse.Namespace) -> int:
    from kubetune.launch import run

    command = args.command_args[1:] if args.command_args[:1] == ["--"] else args.command_args
    return run(command)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", required=True, help="FineTuneJob manifest or TrainConfig (YAML/JSON)")
    p.add_argument(
        "--pvc",
        action="append",
        metavar="CLAIM=DIR",
        help="where a pvc:// claim is mounted here (repeatable)",
    )
    p.add_argument(
        "--configmap",
        action="append",
        metavar="NAME=DIR",
        help="where a configmap:// ConfigMap is mounted here (repeatable)",
    )
    p.add_argument(
        "--cache-dir", default=None, help="cache for converted weights (default ~/.cache/kubetune)"
    )
    p.add_argument(
        "--log-format",
        choices=["auto", "json", "rich"],
        default="auto",
        help="json in pods (no TTY), a progress bar on a terminal",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="generate crds/*.yaml from the API models")
    crds.add_argument("--out", default="crds")
    crds.add_argument("--docs", default="docs/crd-reference.md", help="generated Markdown reference")
    crds.add_argument("--check", action="store_true", help="fail when the committed YAML is stale")
    crds.set_defaults(func=_cmd_crds)

    op = sub.add_parser("operator", help="run the Kopf operator")
    op.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace")
    op.add_argument("-A", "--all-namespaces", action="store_true")
    op.add_argument(
        "--standalone",
        action="store_true",
        help="no Kopf peering (one replica); refuses to start while another kubetune operator is active "
        "for these namespaces",
    )
    op.add_argument("--trainer-image", help="image of training pods (default: $KUBETUNE_TRAINER_IMAGE)")
    op.add_argument("--server-image", help="image of serving pods (default: $KUBETUNE_SERVER_IMAGE)")
    op.add_argument("--peering", help="Kopf peering to join (default: $KUBETUNE_PEERING_NAME, kubetune)")
    op.add_argument(
        "--priority",
        type=int,
        help="Kopf peering priority; 1073741824 outranks the chart's replicas, which pause while this runs",
    )
    op.set_defaults(func=_cmd_operator)

    train = sub.add_parser("train", help="fine-tune (locally or as the pod entrypoint)")
    _add_train_args(train)
    train.set_defaults(func=_cmd_train)

    val = sub.add_parser("validate-data", help="validate every dataset row, then exit")
    _add_train_args(val)
    val.set_defaults(func=_cmd_validate_data)

    launch = sub.add_parser("launch", help="run torchrun/accelerate and keep the trainer's exit code")
    launch.add_argument(
        "command_args", nargs=argparse.REMAINDER, help="-- torchrun ... -m kubetune.cli train ..."
    )
    launch.set_defaults(func=_cmd_launch)

    serve = sub.add_parser(
        "serve",
        help="serve a base model with LoRA adapters (OpenAI-compatible)",
        epilog=_serve_fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("-f", "--file", required=True, help="serve-config.yaml (a ServeConfig)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=None,
        help="largest request body (HTTP 413 past it; default 1 MiB)",
    )
    serve.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kubetune.api.loading import ConfigError

    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"kubetune: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
