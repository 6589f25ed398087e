"""The README's "5-minute tour on a cluster", as written: its shell block, taken from README.md at test
time (so the two cannot drift), runs against the cluster `make cluster` starts (scripts/local_cluster.py,
the same entry point, in a folder of the test's own), and `make cluster-stop`'s entry point ends it.

The tour must end with the FineTuneJob Succeeded after a real fine-tune (the training pod's process
trained MiniLM on the data the tour's loader Job put on the volume), the AdapterDeployment Available,
the classifier answering through `kubectl port-forward` to its Service, and the events the README
names among the FineTuneJob's events.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tools import helm, tools_bin

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local_cluster.py"
MARKER = "<!-- tour: the shell block below is run verbatim by tests/e2e/test_readme_tour.py -->"
LABELS = {
    "billing_refund", "card_lost_stolen", "account_access", "shipping_delay",
    "cancel_subscription", "product_defect", "change_address", "fraud_report",
}  # fmt: skip
UP_TIMEOUT = 600  # the first start may build the control plane binaries (a no-op when current)
TOUR_TIMEOUT = 2400  # real training on 2 shared cores: minutes; a failure ends the wait at once

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def tour_block(readme: str) -> str:
    """The ```sh block right after the tour marker."""
    after = readme.split(MARKER, 1)[1]
    match = re.match(r"\s*```sh\n(.*?)\n```", after, re.S)
    assert match, "no ```sh block after the tour marker in README.md"
    return match.group(1)


def readme_events(readme: str) -> list[str]:
    """The event reasons the README says `kubectl describe ftj` shows."""
    sentence = readme.split("the events the operator emitted on each transition:", 1)[1].split(". ", 1)[0]
    return re.findall(r"`(\w+)`", sentence)


def test_tour_block_events_and_make_targets_are_found() -> None:
    readme = (ROOT / "README.md").read_text()
    block = tour_block(readme)
    assert "kubectl -n kubetune apply -f examples/tour/finetunejob-support-intents.yaml" in block
    assert len(readme_events(readme)) >= 3
    # `make cluster` / `make cluster-stop` are this test's entry point (the test calls the script itself,
    # so that a changed pyproject.toml does not make it reinstall the venv first).
    makefile = (ROOT / "Makefile").read_text()
    assert "\t$(PY) scripts/local_cluster.py --dir $(CLUSTER_DIR)\n" in makefile
    assert "\t$(PY) scripts/local_cluster.py --dir $(CLUSTER_DIR) --stop\n" in makefile


def test_chart_notes_give_the_tour_in_the_same_namespace() -> None:
    """`helm install`'s NOTES repeat the README's tour steps, in the release namespace the README uses
    (with the full FineTuneJob where the README's block has the short tour one)."""
    rendered = subprocess.run(
        [helm(), "install", "kubetune", str(ROOT / "charts" / "kubetune"), "-n", "kubetune",
         "--dry-run=client"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    steps = rendered.split("NOTES:", 1)[1].split("2. Fine-tune", 1)[1].split("3. ", 1)[0]
    commands = [line.strip() for line in steps.splitlines() if line.strip().startswith("kubectl")]
    tour = tour_block((ROOT / "README.md").read_text()).replace("examples/tour/", "examples/k8s/")
    assert len(commands) >= 6
    assert all(c in tour for c in commands if c != "kubectl -n kubetune get ftj -w"), commands


class LocalCluster:
    """`make cluster` in a folder of the test's own, in the background; `stop()` is `make cluster-stop`."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.log = state.parent / "cluster.out"
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--dir", str(state)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> dict[str, str]:
        deadline = time.monotonic() + UP_TIMEOUT
        while not (self.state / "ready").is_file():
            assert self.proc.poll() is None, f"make cluster exited {self.proc.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"make cluster not up in {UP_TIMEOUT} s:\n{self.output()}"
            time.sleep(1)
        return dict(json.loads((self.state / "ready").read_text()))

    def stop(self) -> int:
        subprocess.run([sys.executable, str(SCRIPT), "--dir", str(self.state), "--stop"], check=True)
        return self.proc.wait(60)


def kubectl_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    out = subprocess.run(
        ["kubectl", "-n", "kubetune", *args, "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def curl_answer(tour_output: str) -> dict[str, Any]:
    """The JSON the tour's curl printed (bash -x traces each command before its output)."""
    after = tour_output[tour_output.index("+ curl ") :]
    body = after[after.index("\n") + 1 :]
    answer, _ = json.JSONDecoder().raw_decode(body[body.index("{") :])
    return dict(answer)


def run_tour(block: str, env: dict[str, str], cluster: LocalCluster, out: Path) -> str:
    """Run the block with bash -e; end early when the FineTuneJob fails or the cluster dies."""
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            ["bash", "-e", "-x", "-c", block], env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + TOUR_TIMEOUT
        while proc.poll() is None:
            failed = ""
            if cluster.proc.poll() is not None:
                failed = "the cluster exited"
            elif time.monotonic() > deadline:
                failed = f"the tour took more than {TOUR_TIMEOUT} s"
            else:
                ftj = subprocess.run(
                    ["kubectl", "-n", "kubetune", "get", "ftj", "support-intents", "-o", "json"],
                    env=env, capture_output=True, text=True,
                )  # fmt: skip
                if ftj.returncode == 0 and json.loads(ftj.stdout).get("status", {}).get("phase") == "Failed":
                    failed = f"the FineTuneJob failed: {json.loads(ftj.stdout)['status']}"
            if failed:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{failed}\n{out.read_text()[-4000:]}\n{cluster.output()[-4000:]}")
            time.sleep(5)
    text = out.read_text(errors="replace")
    assert proc.returncode == 0, (
        f"the tour failed ({proc.returncode}):\n{text[-6000:]}\n{cluster.output()[-4000:]}"
    )
    return text


def test_readme_tour_on_make_cluster(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = tour_block(readme)
    started = time.monotonic()
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        ready = cluster.wait_ready()
        up = time.monotonic() - started
        assert f"export KUBECONFIG={ready['kubeconfig']}" in cluster.output()
        env = {
            **os.environ,
            "KUBECONFIG": ready["kubeconfig"],
            "PATH": os.pathsep.join([str(tools_bin()), str(Path(sys.executable).parent), os.environ["PATH"]]),
        }
        text = run_tour(block, env, cluster, tmp_path / "tour.out")
        print(f"make cluster up in {up:.0f} s; tour {time.monotonic() - started - up:.0f} s")

        ftj = kubectl_json(env, "get", "ftj", "support-intents")
        assert ftj["status"]["phase"] == "Succeeded", ftj["status"]
        assert ftj["status"]["progress"] == "40/40", ftj["status"]
        assert ftj["status"]["accuracy"] >= 0.7, ftj["status"]
        adapter = tmp_path / "cluster" / "pvc" / "kubetune-output" / "support-intents"
        assert any(adapter.rglob("adapter_model.safetensors")), sorted(adapter.rglob("*"))
        adep = kubectl_json(env, "get", "adep", "support-intents")
        assert adep["status"]["phase"] == "Available", adep["status"]
        answer = curl_answer(text)
        assert answer["data"][0]["label"] in LABELS, answer
        events = kubectl_json(env, "get", "events", "--field-selector", "involvedObject.name=support-intents")
        reasons = {e["reason"] for e in events["items"] if e["involvedObject"]["kind"] == "FineTuneJob"}
        assert set(readme_events(readme)) <= reasons, reasons
    finally:
        code = cluster.stop() if cluster.proc.poll() is None else cluster.proc.returncode
        print(cluster.output()[-3000:])
    assert code == 0
    assert "stopped (SIGTERM)" in cluster.output()
