"""The human in the loop, end to end on the real MiniLM: a real support-intents adapter (trained here
with `recipe: probe`, seconds), the real server with fresh data kept, uncertain and novel
classifications queued, the queue behind the admin token, and the labelling page driven by keyboard
in Debian's headless Chromium (playwright-core). The browser test skips only without /usr/bin/chromium.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from kubetune_trainer.serve.config import AdapterSpec, ServeConfig, ServeMonitoring
from kubetune_trainer.serve.main import DrainingServer
from test_serve_helpers import ADMIN_TOKEN, MINILM, running_server

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"
BROWSER = Path(__file__).with_name("browser")
CHROMIUM = Path("/usr/bin/chromium")
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


BOUNDARY = rows(DATA / "support-intents-boundary" / "test.jsonl")
SHIPPED = rows(DATA / "support-intents" / "validation.jsonl")
MIXED = rows(DATA / "support-intents-es-mixed" / "test.jsonl")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The support-intents example trained with recipe probe (no steps): a real 98% adapter."""
    out = tmp_path_factory.mktemp("train")
    doc = yaml.safe_load((ROOT / "examples" / "k8s" / "finetunejob-support-intents.yaml").read_text())
    doc["spec"]["training"] = {**doc["spec"]["training"], "recipe": "probe", "maxSteps": 1}
    del doc["spec"]["training"]["epochs"]
    manifest = out / "ftj.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    done = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "train", "-f", str(manifest), "--log-format", "json",
         "--pvc", f"kubetune-data={DATA}", "--pvc", f"kubetune-output={out}"],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "KUBETUNE_TERMINATION_LOG": str(out / "termination")},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "support-intents" / "metrics.json").read_text())
    assert metrics["recipe"] == "probe" and metrics["steps"] == 0
    assert metrics["after"]["accuracy"] == pytest.approx(metrics["baseline"]["accuracy"], abs=0.01)
    return out / "support-intents"


@pytest.fixture(scope="module")
def server(
    adapter: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, DrainingServer, Path]]:
    fresh = tmp_path_factory.mktemp("fresh")
    os.environ["KUBETUNE_ADMIN_TOKEN"] = ADMIN_TOKEN
    try:
        config = ServeConfig(
            base_model=MINILM,
            task="sequence-classification",
            max_input_tokens=128,
            adapters=[AdapterSpec(name="support-intents", version="v1", uri=str(adapter))],
            monitoring=ServeMonitoring(fresh_data_uri=str(fresh), drop_fields=["email"]),
        )
    finally:
        del os.environ["KUBETUNE_ADMIN_TOKEN"]
    with running_server(config) as (url, running):
        yield url, running, fresh / "support-intents"


def classify(url: str, texts: list[str], metadata: dict[str, str] | None = None) -> list[dict]:
    body = {"model": "support-intents", "input": texts, **({"metadata": metadata} if metadata else {})}
    response = httpx.post(f"{url}/v1/classify", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def queue(url: str, **params: str) -> dict:
    response = httpx.get(f"{url}/admin/review/queue", params=params, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def gauge(url: str) -> float:
    lines = httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
    found = [
        line for line in lines if line.startswith('kubetune_review_queue_length{adapter="support-intents"}')
    ]
    return float(found[0].split()[-1])


def test_uncertain_and_novel_inputs_are_queued_and_labels_become_fresh_data(
    server: tuple[str, DrainingServer, Path],
) -> None:
    url, _, folder = server
    shipped = classify(url, [r["text"] for r in SHIPPED[:40]])
    boundary = classify(url, [r["text"] for r in BOUNDARY], metadata={"email": "x@y.z", "tier": "gold"})
    mixed = classify(url, [r["text"] for r in MIXED])
    for item in shipped + boundary:
        top = sorted(item["probabilities"].values(), reverse=True)
        assert item["margin"] == pytest.approx(top[0] - top[1], abs=1e-5)
        assert item["novelty"] is not None and 0 <= item["novelty"] <= 2
    # The border cases are the ones the model hesitates on; Spanish/English is far from the reference.
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean([i["margin"] for i in boundary]) < mean([i["margin"] for i in shipped])
    assert mean([i["novelty"] for i in mixed]) > mean([i["novelty"] for i in shipped])

    listed = queue(url, limit="1000")
    waiting = {item["text"]: item for item in listed["data"]}
    thresholds = ServeMonitoring().review
    expected = {
        text
        for text, item in zip(
            [r["text"] for r in SHIPPED[:40] + BOUNDARY + MIXED], shipped + boundary + mixed, strict=True
        )
        if item["margin"] < thresholds.margin_threshold or item["novelty"] > thresholds.novelty_threshold
    }
    assert set(waiting) == expected and len(expected) >= 10
    assert listed["waiting"] == len(expected) == gauge(url)
    assert listed["labels"][:2] == ["billing_refund", "card_lost_stolen"]
    first = listed["data"][0]
    assert (
        len(first["guesses"]) == 2
        and first["guesses"][0]["probability"] >= first["guesses"][1]["probability"]
    )

    classify(url, [BOUNDARY[0]["text"]] * 2)  # the same texts again: queued once
    assert queue(url)["waiting"] == len(expected)

    bare = httpx.get(f"{url}/admin/review/queue", timeout=30)
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Basic")

    text = next(t for t in waiting if t in {r["text"] for r in BOUNDARY})
    truth = next(r["label"] for r in BOUNDARY if r["text"] == text)
    answer = httpx.post(
        f"{url}/admin/review/label",
        json={"model": "support-intents", "id": waiting[text]["id"], "label": truth},
        headers=AUTH,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    written = [json.loads(line) for line in (folder / answer.json()["freshFile"]).read_text().splitlines()]
    assert {"text": text, "label": truth, "metadata": {"tier": "gold"}} in written  # email dropped (PII)
    assert text not in {i["text"] for i in queue(url, limit="1000")["data"]}
    assert gauge(url) == len(expected) - 1
    wrong = httpx.post(
        f"{url}/admin/review/label",
        json={"model": "support-intents", "id": waiting[text]["id"], "label": "no_such_label"},
        headers=AUTH,
        timeout=30,
    )
    assert wrong.status_code == 400


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_labelling_page_by_keyboard_in_headless_chromium(
    server: tuple[str, DrainingServer, Path], tmp_path: Path
) -> None:
    url, _, folder = server
    node = shutil.which("node")
    assert node, "node is needed to drive Chromium (apt-get install nodejs)"
    assert (BROWSER / "node_modules" / "playwright-core").is_dir(), (
        f"playwright-core missing: run `npm ci --prefix {BROWSER.relative_to(ROOT)}`"
    )
    classify(url, [r["text"] for r in BOUNDARY])
    before = queue(url, limit="1000")
    assert before["waiting"] >= 3
    first, second = before["data"][0], before["data"][1]
    labels = before["labels"]
    key = "2" if first["guesses"][0]["label"] != labels[1] else "3"  # not the model's own top guess
    chosen = labels[int(key) - 1]
    shot = Path(os.environ.get("KUBETUNE_REVIEW_SCREENSHOT", tmp_path / "review.png"))

    done = subprocess.run(
        [node, str(BROWSER / "review_page.mjs"), f"{url}/admin/review/", ADMIN_TOKEN, str(shot), key],
        capture_output=True, text=True, timeout=180, check=False, cwd=BROWSER,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["status"] == 200 and not [c for c in seen["console"] if c.startswith(("error", "pageerror"))]
    assert seen["first"] == first["text"] and seen["second"] == second["text"]
    assert seen["buttons"][0][0] == f"1 {labels[0]}" and len(seen["buttons"]) == len(labels)
    top1 = next(text for text, cls in seen["buttons"] if cls == "top1")
    assert top1.endswith(first["guesses"][0]["label"])
    assert first["guesses"][1]["label"] in seen["guesses"]
    assert seen["statusAfterLabel"].startswith(f"Labelled \u201c{chosen}\u201d")
    assert shot.stat().st_size > 10_000

    fresh_rows = [
        json.loads(line)
        for name in ("train.jsonl", "holdout.jsonl")
        if (folder / name).is_file()
        for line in (folder / name).read_text().splitlines()
    ]
    assert {"text": first["text"], "label": chosen} in [
        {k: r[k] for k in ("text", "label")} for r in fresh_rows
    ]
    assert second["text"] not in {r["text"] for r in fresh_rows}  # skipped: not labelled
    after = {i["text"] for i in queue(url, limit="1000")["data"]}
    assert first["text"] not in after and second["text"] not in after
    assert seen["third"] in after or seen["third"] == "Nothing to review."


def test_kubectl_kubetune_review_prints_the_queue(server: tuple[str, DrainingServer, Path], cluster) -> None:  # type: ignore[no-untyped-def]
    """`kubectl kubetune review ADEP` through real kubectl (plugin on PATH) against the real control
    plane: the token comes from the Secret named by spec.adminTokenSecretRef; --url reaches the server
    (no kubelet runs the pods here; tests/e2e/test_review_loop.py runs the default port-forward path)."""
    url, _, _ = server
    classify(url, [r["text"] for r in BOUNDARY])
    token = base64.b64encode(ADMIN_TOKEN.encode()).decode()
    adep = yaml.safe_load((ROOT / "examples" / "k8s" / "adapterdeployment-support-intents.yaml").read_text())
    adep["spec"]["adminTokenSecretRef"] = {"name": "kubetune-admin", "key": "token"}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "kubetune-admin"},
        "data": {"token": token},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, adep]))
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        "KUBECTL": cluster.kubectl_path,
    }
    env.pop("KUBETUNE_ADMIN_TOKEN", None)
    command = [cluster.kubectl_path, "kubetune", "review", "support-intents", "--url", url, "--limit", "5"]
    done = subprocess.run(
        [*command, f"--kubeconfig={cluster.kubeconfig}"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    expected = queue(url, limit="5")
    lines = done.stdout.splitlines()
    assert lines[0] == f"support-intents: {expected['waiting']} waiting (order: entropy)"
    first = expected["data"][0]
    assert f"{first['margin']:.3f}" in lines[2] and first["guesses"][0]["label"] in lines[2]
    assert " ".join(first["text"].split())[:40] in done.stdout.replace("\n" + " " * 70, " ")
    rows = [line for line in lines[2:] if line[:3].strip().isdigit()]
    assert len(rows) == len(expected["data"]) == 5

    cluster.kubectl("delete", "secret", "kubetune-admin")
    gone = subprocess.run(
        [*command, f"--kubeconfig={cluster.kubeconfig}"], capture_output=True, text=True, timeout=60, env=env
    )
    assert gone.returncode != 0 and "kubetune-admin" in gone.stderr
