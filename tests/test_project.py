"""The project's files agree: settings, CLI, MLproject and the flow signature; conda.yaml and pyproject.toml."""
import inspect
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from flows.__main__ import run_parser
from flows.pipeline import pipeline
from flows.settings import SETTINGS, Run, Setting, _settings, mlproject
from pairs.protocol import Protocol
from pairs.config import FitConfig, Training, option

ROOT = Path(__file__).resolve().parent.parent


def test_mlproject_is_written_from_the_settings():
    assert (ROOT / "MLproject").read_text() == mlproject(), "MLproject is stale: run `python -m flows mlproject`"
    spec = yaml.safe_load(mlproject())["entry_points"]
    assert set(spec) == {"main", "report"}  # one entry point runs any stage (until=prepare|search|final|report)
    params = spec["main"]["parameters"]
    assert params["until"]["default"] == "report"
    # declared: the settings with a value of their own; the rest pass through when given (no empty params logged)
    assert set(params) == {"profile", "register_model", "device", "until"}


def test_every_field_of_protocol_and_run_is_one_setting_everywhere():
    names = [f.name for f in fields(Run)] + [f.name for f in fields(Protocol)]
    assert [s.name for s in SETTINGS] == names
    assert {f.name for f in fields(Training)} <= set(names)  # lr, aux_weight, normalize, and what comes next
    cli = {a.dest: a.default for a in run_parser()._actions if a.dest != "help"}
    flow = inspect.signature(pipeline.fn).parameters
    mlp = yaml.safe_load(mlproject())["entry_points"]["main"]
    for s in SETTINGS:
        assert cli[s.name] == s.default and flow[s.name].default == s.flow_default, s.name
        assert s.flow_default in (s.default, "", []), s.name  # where not the same: the empty value, meaning None
        if s.name != "experiment" and s.default is not None:  # (`mlflow run --experiment-name` sets experiment)
            assert mlp["parameters"][s.name]["default"] == s.default, s.name
            assert f"{s.flag} {{{s.name}}}" in mlp["command"]
        elif s.name != "experiment":  # passed through by mlflow run as --name value: the parser takes that spelling
            assert run_parser().parse_args([f"--{s.name}", ""]).__dict__[s.name] is None, s.name
    assert set(cli) == set(flow) == set(names)
    schema = pipeline.parameters.model_dump()["properties"]  # what the Prefect UI's custom run shows
    assert schema["batch_sizes"]["anyOf"][0] == {"items": {"type": "integer"}, "type": "array"}
    assert schema["normalize"]["anyOf"][0] == {"type": "boolean"}
    assert all(schema[s.name]["description"].startswith(s.help) for s in SETTINGS)  # every field described
    assert schema["profile"]["enum"] == ["full", "quick"] and schema["until"]["enum"][-1] == "report"  # dropdowns


def test_the_prefect_form_shows_every_choice_as_a_dropdown_and_no_none_toggle():
    """A parameter typed `X | None` is a type toggle in Prefect's form (`Property is type "None"` until `str` is
    clicked): every setting with choices is a plain enum (its empty choice '' = the profile's value), a list of
    choices an array of enums (empty = the profile's), `study` a plain text box; and the flow takes those values."""
    from flows.settings import flow_values, validate
    schema = pipeline.parameters.model_dump()["properties"]
    for s in SETTINGS:
        if s.choices:
            shown = schema[s.name]["items"] if s.many else schema[s.name]
            assert "anyOf" not in schema[s.name] and shown["enum"][-len(s.choices):] == list(s.choices), s.name
            assert schema[s.name]["default"] == ([] if s.many else "" if s.default is None else s.default), s.name
    assert [s.name for s in SETTINGS if s.choices] == ["profile", "register_model", "device", "until", "schedule",
                                                       "branch", "head", "precision", "architectures", "variants"]
    assert schema["schedule"]["enum"] == ["", "constant", "cosine", "onecycle"]
    assert schema["study"]["type"] == "string" and schema["study"]["default"] == ""
    assert "extended" in schema["study"]["description"]  # the shipped studies are named where it is typed
    # the empty values are the settings' None: the same protocol as the command line's defaults
    cli = vars(run_parser().parse_args(["--profile", "quick"]))
    form = {s.name: s.flow_default for s in SETTINGS} | {"profile": "quick"}
    assert flow_values(cli) == form and validate(**form)[:2] == validate(**cli)[:2]
    assert validate(**form | {"schedule": "cosine", "variants": ["MLP"]})[1].variants == ("MLP",)


def test_a_new_field_becomes_a_setting_with_its_type():
    @dataclass(frozen=True, kw_only=True)
    class More(Training):
        dropout: float = option(0.0, "dropout probability")
        widths: tuple[int, ...] = option((32, 64), "channels")
    got = {s.name: s for s in _settings(More, True)}
    assert got["dropout"] == Setting("dropout", float, False, None, "dropout probability", (), True)
    assert got["widths"].parse("16,32") == (16, 32) and got["widths"].parse("") is None
    assert got["normalize"].parse("yes") is True
    training = FitConfig("MLP", aux_weight=0.5).training()
    assert training == Training(aux_weight=0.5).training() and set(training) == {f.name for f in fields(Training)}
    assert {"lr": 1e-3, "aux_weight": 0.5, "normalize": False}.items() <= training.items()


def test_conda_env_pins_what_pyproject_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert sorted(deps) == sorted(p for p in pip if not p.startswith("-e"))
    assert all("==" in d for d in deps)
    assert "python=3.11.7" in conda


def test_importing_any_module_changes_nothing_in_the_process():
    """Nothing happens at import: every module of flows/ and pairs/ imported in a fresh interpreter (after the
    libraries they use) leaves the environment, the import hooks (none of ours), the signal handlers and
    matplotlib's backend as they were; the entry points (`flows.lifetime.start`, the flow's `guard_child`) are
    what change them."""
    modules = sorted(f"{p.parent.name}.{p.stem}" for d in ("flows", "pairs") for p in (ROOT / d).glob("*.py")
                     if p.stem not in ("__init__", "__main__"))
    check = f"""
import os, signal, sys, threading
import matplotlib, mlflow, pandas, prefect, torch  # (their own import-time effects are theirs: taken first)
env, handlers = dict(os.environ), [signal.getsignal(s) for s in (2, 15)]
backend = matplotlib.rcParams._get("backend")
for name in {modules!r}:
    __import__(name)
changed = set(k for k, v in set(os.environ.items()) ^ set(env.items()) if not k.startswith("_MLFLOW"))  # (mlflow's)
assert not changed, changed
assert not [h for h in sys.meta_path if type(h).__module__.startswith(("flows", "pairs"))], sys.meta_path
assert [signal.getsignal(s) for s in (2, 15)] == handlers
assert matplotlib.rcParams._get("backend") == backend and "matplotlib.pyplot" not in sys.modules
assert not [t.name for t in threading.enumerate() if t.name == "pairs-spawner"]
print(len({modules!r}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PAIRS_GUARD"))}
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0 and int(out.stdout) == len(modules) > 20, out.stderr[-2000:]
