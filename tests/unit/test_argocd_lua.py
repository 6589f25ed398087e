"""Argo CD health checks and resource actions (integrations/argocd/), run the way Argo CD runs them.

Every case of every `health_test.yaml` and `actions/action_test.yaml` under integrations/argocd/ is
executed with lupa on a Lua 5.1 runtime (`lupa.lua51`; gopher-lua, Argo CD's interpreter, implements
Lua 5.1). The harness mirrors argo-cd's util/lua (lua.go, health_test.go, custom_actions_test.go):

- the object is passed as the global `obj` (maps -> tables, lists -> 1-based arrays, numbers as
  Lua numbers), `actionParams` as a table of the test's `parameters`;
- only the libraries Argo CD opens for argocd-cm scripts are there: base, table, package and a
  "safe" os with just `time` and `date` (no string, math, io, debug, coroutine; strings have no
  methods). Upstream tests open every library for health checks; argocd-cm scripts run without them
  unless `resource.customizations.useOpenLibs.<group_kind>` is set, so the stricter setting is used;
- a returned table is encoded as gopher-json does (empty table -> [], a table must be a dense
  1..n array or have only string keys, a table may not appear twice), then an action's result goes
  through argo-cd's cleanReturnedObj (an empty [] where the input had a map becomes {} again);
- health: `status` must be a known code (else Unknown / "Lua returned an invalid health status") and
  status and message must equal the case's `healthStatus` (a missing message is "");
- discovery: the offered actions (name, disabled, displayName, iconClass) must equal the case's
  `result` exactly (upstream only checks containment);
- action: the returned object must equal `expectedOutputPath` (integral numbers compared as ints),
  or the error must equal `expectedErrorMessage`. The annotation kubetune.dev/retrain-requested, a
  timestamp, must be a UTC RFC 3339 time within a few minutes of now and is then compared as
  0001-01-01T00:00:00Z (like upstream's normalizer does for Flux's requestedAt).

Known difference between the runtimes, kept out of the scripts: gopher-lua prints a float with Go's
shortest representation, Lua 5.1 with "%.14g"; the scripts round to 4 decimals before printing, for
which both agree.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INTEGRATIONS = ROOT / "integrations" / "argocd"
HEALTH_CODES = {"Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing"}
TIME_ANNOTATION = "kubetune.dev/retrain-requested"
NORMALIZED_TIME = "0001-01-01T00:00:00Z"
MIN_HEALTH_CASES = 12


class K8sLoader(yaml.SafeLoader):
    """YAML as sigs.k8s.io/yaml reads it: timestamps stay strings."""


K8sLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=K8sLoader)


# --- the Lua VM ------------------------------------------------------------------------------------


class LuaScriptError(Exception):
    """The script raised (error(...) or a runtime error); the message is Lua's, without traceback."""


SANDBOX = """
local safe_os = {time = os.time, date = os.date}
debug.setmetatable("", nil)
string, math, io, debug, coroutine, python = nil, nil, nil, nil, nil, nil
package.loaded.string, package.loaded.math, package.loaded.io = nil, nil, nil
package.loaded.debug, package.loaded.coroutine, package.loaded.python = nil, nil, nil
os = safe_os
package.loaded.os = safe_os
"""

RUNNER = """
local load_source, protected_call, address = loadstring, pcall, tostring
local function run(source)
  local fn, err = load_source(source, "=script")
  if fn == nil then
    return false, err
  end
  return protected_call(fn)
end
return run, address
"""


def run_lua(script: str, obj: dict[str, Any], params: dict[str, str] | None = None) -> Any:
    """Run one script with `obj` (and `actionParams`) as Argo CD does; returns the decoded result."""
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False, unpack_returned_tuples=True)
    runner, address = runtime.execute(RUNNER)
    runtime.execute(SANDBOX)
    g = runtime.globals()
    g.obj = to_lua(runtime, obj)
    g.actionParams = to_lua(runtime, dict(params or {}))
    ok, value = runner(script)
    if not ok:
        raise LuaScriptError(str(value))
    return from_lua(value, address, set())


def to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[str(key)] = to_lua(runtime, item)
        return table
    if isinstance(value, list):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(runtime, item)
        return table
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise TypeError(f"cannot pass {type(value).__name__} to Lua: {value!r}")


def from_lua(value: Any, address: Any, visited: set[str]) -> Any:
    """gopher-json's encoding of a Lua value, as the JSON Argo CD unmarshals."""
    if lua51.lua_type(value) == "table":
        identity = address(value)  # "table: 0x...": the Lua table's identity, not its Python wrapper's
        if identity in visited:
            raise LuaScriptError("cannot encode recursively nested tables to JSON")
        visited.add(identity)
        items = list(value.items())
        if not items:
            return []
        keys = [k for k, _ in items]
        if all(isinstance(k, str) for k in keys):
            return {k: from_lua(v, address, visited) for k, v in items}
        if all(isinstance(k, int | float) and not isinstance(k, bool) for k in keys):
            ordered = sorted(keys)
            if ordered != list(range(1, len(keys) + 1)):
                raise LuaScriptError("cannot encode sparse array")
            by_key = dict(items)
            return [from_lua(by_key[k], address, visited) for k in ordered]
        raise LuaScriptError("cannot encode mixed or invalid key types")
    if lua51.lua_type(value) is not None:
        raise LuaScriptError(f"cannot encode {lua51.lua_type(value)} to JSON")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def clean_returned_obj(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """argo-cd util/lua cleanReturnedObj: [] where the input had a map becomes {} again."""
    for key, old_value in old.items():
        if key not in new:
            continue
        new_value = new[key]
        if isinstance(new_value, dict) and isinstance(old_value, dict):
            new[key] = clean_returned_obj(new_value, old_value)
        elif isinstance(new_value, list):
            if isinstance(old_value, dict) and not new_value:
                new[key] = {}
            elif isinstance(old_value, list):
                new[key] = clean_returned_array(new_value, old_value)
    return new


def clean_returned_array(new: list[Any], old: list[Any]) -> list[Any]:
    for i, (new_value, old_value) in enumerate(zip(new, old, strict=False)):
        if isinstance(new_value, dict) and isinstance(old_value, dict):
            new[i] = clean_returned_obj(new_value, old_value)
        elif isinstance(new_value, list) and isinstance(old_value, list):
            new[i] = clean_returned_array(new_value, old_value)
    return new


def normalize_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def normalize_request_time(obj: dict[str, Any]) -> dict[str, Any]:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    value = annotations.get(TIME_ANNOTATION)
    if value is None or value == NORMALIZED_TIME:
        return obj
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value), f"{TIME_ANNOTATION}={value!r}"
    when = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    skew = abs((datetime.datetime.now(datetime.UTC) - when).total_seconds())
    assert skew < 300, f"{TIME_ANNOTATION}={value} is not the current UTC time"
    annotations[TIME_ANNOTATION] = NORMALIZED_TIME
    return obj


# --- the cases -------------------------------------------------------------------------------------


def kind_dirs() -> list[Path]:
    return sorted(p.parent for p in INTEGRATIONS.glob("*/*/health.lua"))


def health_cases() -> Iterator[Any]:
    for kind_dir in kind_dirs():
        spec = load_yaml(kind_dir / "health_test.yaml")
        for case in spec["tests"]:
            case_id = f"{kind_dir.relative_to(INTEGRATIONS)}/{case['inputPath']}"
            yield pytest.param(kind_dir, case, id=case_id)


def action_specs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for test_file in sorted(INTEGRATIONS.glob("*/*/actions/action_test.yaml")):
        yield test_file.parent, load_yaml(test_file)


def discovery_cases() -> Iterator[Any]:
    for actions_dir, spec in action_specs():
        for case in spec.get("discoveryTests", []):
            case_id = f"{actions_dir.relative_to(INTEGRATIONS)}/discovery/{case['inputPath']}"
            yield pytest.param(actions_dir, case, id=case_id)


def action_cases() -> Iterator[Any]:
    for actions_dir, spec in action_specs():
        for case in spec.get("actionTests", []):
            case_id = f"{actions_dir.relative_to(INTEGRATIONS)}/{case['action']}/{case['inputPath']}"
            yield pytest.param(actions_dir, case, id=case_id)


def execute_health(kind_dir: Path, obj: dict[str, Any]) -> dict[str, str]:
    result = run_lua((kind_dir / "health.lua").read_text(), obj)
    if result is None or result == []:
        return {"status": "", "message": ""}
    assert isinstance(result, dict), f"health.lua returned {result!r}"
    status = result.get("status", "")
    if status not in HEALTH_CODES:
        return {"status": "Unknown", "message": "Lua returned an invalid health status"}
    return {"status": status, "message": result.get("message", "")}


@pytest.mark.parametrize(("kind_dir", "case"), list(health_cases()))
def test_health(kind_dir: Path, case: dict[str, Any]) -> None:
    obj = load_yaml(kind_dir / case["inputPath"])
    expected = {"status": case["healthStatus"]["status"], "message": case["healthStatus"].get("message", "")}
    assert execute_health(kind_dir, obj) == expected


@pytest.mark.parametrize(("actions_dir", "case"), list(discovery_cases()))
def test_action_discovery(actions_dir: Path, case: dict[str, Any]) -> None:
    obj = load_yaml(actions_dir / case["inputPath"])
    result = run_lua((actions_dir / "discovery.lua").read_text(), obj)
    assert isinstance(result, dict), f"discovery.lua returned {result!r}"
    offered = {}
    for name, fields in result.items():
        fields = fields if isinstance(fields, dict) else {}
        offered[name] = {
            "disabled": fields.get("disabled", False) is True,
            "displayName": fields.get("displayName", ""),
            "iconClass": fields.get("iconClass", ""),
        }
    expected = {
        item["name"]: {
            "disabled": item.get("disabled", False),
            "displayName": item.get("displayName", ""),
            "iconClass": item.get("iconClass", ""),
        }
        for item in case["result"]
    }
    assert offered == expected


@pytest.mark.parametrize(("actions_dir", "case"), list(action_cases()))
def test_action(actions_dir: Path, case: dict[str, Any]) -> None:
    source = load_yaml(actions_dir / case["inputPath"])
    script = (actions_dir / case["action"] / "action.lua").read_text()
    params = case.get("parameters")
    if case.get("expectedErrorMessage"):
        with pytest.raises(LuaScriptError) as raised:
            run_lua(script, source, params)
        assert str(raised.value) == case["expectedErrorMessage"]
        return
    result = run_lua(script, source, params)
    assert isinstance(result, dict), f"{case['action']} returned {result!r}, expected the patched object"
    result = normalize_request_time(clean_returned_obj(result, load_yaml(actions_dir / case["inputPath"])))
    expected = load_yaml(actions_dir / case["expectedOutputPath"])
    assert normalize_numbers(result) == normalize_numbers(expected)


# --- the suite itself ------------------------------------------------------------------------------


def test_every_kind_has_enough_health_cases_and_no_orphan_testdata() -> None:
    assert [d.name for d in kind_dirs()] == ["AdapterDeployment", "FineTuneJob"]
    for kind_dir in kind_dirs():
        cases = load_yaml(kind_dir / "health_test.yaml")["tests"]
        assert len(cases) >= MIN_HEALTH_CASES, f"{kind_dir.name}: {len(cases)} health cases"
        used = {case["inputPath"] for case in cases}
        on_disk = {str(p.relative_to(kind_dir)) for p in (kind_dir / "testdata").glob("*.yaml")}
        assert used == on_disk, f"{kind_dir.name}: unreferenced {on_disk - used}, missing {used - on_disk}"
        statuses = {case["healthStatus"]["status"] for case in cases}
        assert {"Healthy", "Progressing", "Degraded"} <= statuses


def test_every_action_is_discovered_and_tested() -> None:
    specs = list(action_specs())
    assert len(specs) == 2
    for actions_dir, spec in specs:
        scripts = {p.parent.name for p in actions_dir.glob("*/action.lua")}
        for case in spec["discoveryTests"]:
            assert {item["name"] for item in case["result"]} == scripts, case["inputPath"]
        tested = {case["action"] for case in spec["actionTests"] if not case.get("expectedErrorMessage")}
        refused = {case["action"] for case in spec["actionTests"] if case.get("expectedErrorMessage")}
        assert tested == scripts, f"{actions_dir}: actions without a passing case: {scripts - tested}"
        assert refused == scripts, f"{actions_dir}: actions without a refusal case: {scripts - refused}"
        referenced = {case["inputPath"] for case in spec["discoveryTests"] + spec["actionTests"]}
        referenced |= {
            case["expectedOutputPath"] for case in spec["actionTests"] if "expectedOutputPath" in case
        }
        on_disk = {str(p.relative_to(actions_dir)) for p in (actions_dir / "testdata").glob("*.yaml")}
        assert referenced == on_disk


def test_scripts_use_no_library_argocd_withholds() -> None:
    """Belt and braces for the sandbox: no string./math. calls and no `:method` calls on strings."""
    for script in INTEGRATIONS.rglob("*.lua"):
        text = script.read_text()
        code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
        assert not re.search(r"\b(string|math|io|debug|coroutine)\.", code), script
        assert not re.search(r"\bgoto\b|//", code), f"{script}: not Lua 5.1"
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{script}: end with exactly one newline"


def test_sandbox_withholds_string_library() -> None:
    """The harness must fail a script that Argo CD would fail."""
    with pytest.raises(LuaScriptError, match="string"):
        run_lua('return {status = string.format("%d", 1)}', {})
    with pytest.raises(LuaScriptError):
        run_lua('local s = "abc"; return {status = s:upper()}', {})
    assert run_lua('local os = require("os"); return {status = type(os.date("!%Y"))}', {}) == {
        "status": "string"
    }


def test_encoding_mirrors_gopher_json() -> None:
    assert run_lua("return {}", {}) == []
    assert run_lua("return {1, 2}", {}) == [1, 2]
    with pytest.raises(LuaScriptError, match="nested"):
        run_lua("local t = {}; return {a = t, b = t}", {})
    with pytest.raises(LuaScriptError, match="mixed"):
        run_lua('return {1, a = "x"}', {})
    assert clean_returned_obj({"metadata": {"annotations": []}}, {"metadata": {"annotations": {}}}) == {
        "metadata": {"annotations": {}}
    }


# Testdata that is off the current API on purpose: file -> the only field allowed to fail validation.
OFF_CONTRACT = {
    "FineTuneJob/testdata/unknown_future_phase.yaml": "status.phase",  # a phase a newer operator may add
    "AdapterDeployment/testdata/degraded_invalid_spec.yaml": "spec.replicas",  # what the operator reports
    # The retrain-now contract's status field (integrations/argocd/README.md), until the API has it.
    **{
        f"AdapterDeployment/actions/testdata/{name}.yaml": "status.lastRetrainRequest"
        for name in ("retrain_request_handled", "retrain_request_handled_requested_again")
    },
}


def test_testdata_is_what_the_operator_writes() -> None:
    """Every fixture validates against the kubetune API models, so the scripts are tested on real shapes."""
    from pydantic import ValidationError

    from kubetune.api.adapterdeployment import AdapterDeployment
    from kubetune.api.finetunejob import FineTuneJob

    fixtures = sorted(INTEGRATIONS.glob("kubetune.dev/*/**/testdata/*.yaml"))
    assert len(fixtures) > 40
    for path in fixtures:
        key = str(path.relative_to(INTEGRATIONS / "kubetune.dev"))
        model = FineTuneJob if key.startswith("FineTuneJob/") else AdapterDeployment
        try:
            model.model_validate(load_yaml(path))
        except ValidationError as err:
            locations = {".".join(str(part) for part in e["loc"]) for e in err.errors()}
            assert key in OFF_CONTRACT and locations == {OFF_CONTRACT[key]}, f"{key}: {err}"
