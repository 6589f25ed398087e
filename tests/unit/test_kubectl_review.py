"""`kubectl kubetune review`: the queue table and its arguments (the command itself runs against the
real control plane and server in tests/integration/test_review_page.py)."""

from __future__ import annotations

import pytest

from kubetune.kubectl_plugin.args import build_parser
from kubetune.kubectl_plugin.main import main
from kubetune.kubectl_plugin.review import ReviewUnavailable, render_queue, without_cluster

BODY = {
    "model": "support-intents",
    "waiting": 7,
    "order": "diverse",
    "data": [
        {
            "text": "The blender arrived with a cracked jug. I don't want money back, I just want a jug "
            "that doesn't leak.",
            "guesses": [
                {"label": "product_defect", "probability": 0.48},
                {"label": "billing_refund", "probability": 0.41},
            ],
            "margin": 0.07,
            "novelty": 0.12,
        },
        {
            "text": "hola",
            "guesses": [{"label": "fraud_report", "probability": 0.3}],
            "margin": 0.01,
            "novelty": None,
        },
    ],
}


def test_table_lists_rank_margin_guesses_and_wrapped_text() -> None:
    lines = render_queue(BODY, width=40).splitlines()
    assert lines[0] == "support-intents: 7 waiting (order: diverse)"
    assert lines[2].startswith("  1   0.070    0.120  product_defect 48% vs billing_refund 41%")
    assert lines[2].endswith("The blender arrived with a cracked jug.")
    assert lines[3].strip() == "I don't want money back, I just want a"
    assert lines[-1].startswith("  2   0.010        -  fraud_report 30%") and lines[-1].endswith("hola")


def test_empty_queue() -> None:
    assert render_queue({"model": "x", "waiting": 0, "order": "diverse", "data": []}).endswith(
        "nothing to review"
    )


def test_arguments() -> None:
    args = build_parser().parse_args(["review", "support-intents", "--limit", "5", "--order", "uncertainty"])
    assert (args.name, args.limit, args.order, args.url, args.output) == (
        "support-intents",
        5,
        "uncertainty",
        None,
        "table",
    )
    assert main(["review", "x", "--limit", "0"]) == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["review", "x", "--order", "random"])


def test_url_and_token_need_no_cluster_else_adep_is_required(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with_url = build_parser().parse_args(["review", "--url", "http://127.0.0.1:1"])
    assert with_url.name is None
    assert without_cluster(with_url, {"KUBETUNE_ADMIN_TOKEN": "t"})
    assert not without_cluster(with_url, {})
    assert not without_cluster(build_parser().parse_args(["review", "x"]), {"KUBETUNE_ADMIN_TOKEN": "t"})
    monkeypatch.setenv("KUBETUNE_ADMIN_TOKEN", "t")
    monkeypatch.setenv("KUBECTL", "/nonexistent/kubectl")
    # no kubectl on this path: the command still runs, and fails only on the unreachable server
    assert main(["review", "--url", "http://127.0.0.1:1"]) == ReviewUnavailable.exit_code
    assert "error: http://127.0.0.1:1: " in capsys.readouterr().err
    monkeypatch.delenv("KUBETUNE_ADMIN_TOKEN")
    assert main(["review", "--url", "http://127.0.0.1:1"]) == 1
    assert "kubectl not found" in capsys.readouterr().err  # without the token, the cluster is asked
