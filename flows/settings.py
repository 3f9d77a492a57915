"""The pipeline's settings, declared once, and their validation.

A setting is a field of `pairs.protocol.Protocol` (counts, grid, training options; empty = the profile's
value) or of `Run` below (profile, data, experiment, device, stage). The command line
(flows.__main__), MLproject (`python -m flows mlproject` writes it; a test checks it is current), the
flow's parameters (so a Prefect deployment's custom run can set each one) and `validate` (pure: values ->
Run, Protocol, Study) are all derived from these declarations (flows.preflight then looks at what a call needs
from outside). Imports neither Prefect nor MLflow's client, so bad input fails in about a second with one line.
"""
import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, fields

from pairs import studies
from pairs.protocol import PROFILES, Protocol
from pairs.config import DEVICES, option
from pairs.machine import resolve_device

STEPS = ("prepare", "search", "final", "report")
RENAMED = {"register_model": {"auto": "yes"}}  # old spellings of a choice, still taken on the command line


@dataclass(frozen=True, kw_only=True)
class Run:
    """What a pipeline call runs on and how far; the study itself is the Protocol."""
    profile: str = option("full", "the protocol whose values fill every setting left empty", tuple(PROFILES))
    study: str | None = option(None, f"a shipped study's name ({', '.join(studies.shipped())}) or a study file; its "
                                     "[protocol] overrides the profile, the flags here override it, except for what "
                                     "it searches (default: the profile's grid). Free text, not a dropdown: a file on "
                                     "the machine that runs the flow is a study too")
    trials: int | None = option(None, "Optuna trials per architecture (default: the study's [search] trials)")
    register_model: str = option("yes", "register the best model as a new version of pairs-best "
                                  "(models:/pairs-best/latest); only a run of its study's full counts can take the "
                                  "alias champion, a smoke run never (auto: the old spelling of yes)", ("yes", "no"))
    data_dir: str | None = option(None, "torchvision MNIST root (default: $PAIRS_DATA_DIR, then ./data)")
    experiment: str = option("pairs", "MLflow experiment (under `mlflow run`: its --experiment-name)")
    device: str = option("cpu", "where to train", DEVICES)
    until: str = option("report", "stop after this step", STEPS)
    cluster: str | None = option(None, "train on a running Dask cluster: its scheduler (tcp://HOST:8786); needs a "
                                       "Prefect server (PREFECT_API_URL)")
    workers: int | None = option(None, "train on a local Dask cluster of this many one-thread worker processes")
    chunk: int | None = option(None, "fits per part, search and final (default: a group whole: a search cell or "
                                     "trial, a final variant); smaller parts give more workers work, with the same "
                                     "results")
    fail_first: str | None = option(None, "to watch a retry: the first attempt of each group whose name contains "
                                          "this text fails, and Prefect retries it (e.g. 'final MLP_WS')")
    results: str | None = option(None, "folder of the cached task results (default: .cache/prefect); one that every "
                                       "machine mounts lets each reuse every cached group")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type  # int, float, bool or str; of each item when `many`
    many: bool
    default: object
    help: str
    choices: tuple
    from_profile: bool  # a Protocol field: empty (None) means the profile's value

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    @property
    def flow_default(self):
        """The flow parameter's default. Where the setting's own is None (the profile's value, or none), a text or
        a list of choices takes its empty value instead ('' or []: the same meaning), so that Prefect's form shows
        a text box or a dropdown at once rather than a `str | None` toggle."""
        if self.default is None and self.kind is str:
            return [] if self.many else ""
        return self.default

    @property
    def annotation(self):
        """The flow parameter's type: choices are a Literal (a dropdown in Prefect's form, refused by its API
        when not one of them; '' first where empty means the profile's value)."""
        empty = ("",) if self.flow_default == "" else ()
        kind = typing.Literal[empty + self.choices] if self.choices else self.kind
        kind = list[kind] if self.many else kind
        return kind | None if self.flow_default is None else kind

    def parse(self, text):
        """A command-line or MLproject value; '' means the default (the profile's value)."""
        if text == "":
            return self.default  # None: the profile's value, or the Run default's own None
        try:
            values = tuple(_word(self.kind, v) for v in text.split(",")) if self.many else _word(self.kind, text)
        except ValueError:
            what = {int: "integer", float: "number", bool: "true or false", str: "text"}[self.kind]
            what = f"comma-separated {what}s" if self.many else what
            raise ValueError(f"expected {what}, got {text!r}") from None
        if not self.many:
            values = RENAMED.get(self.name, {}).get(values, values)
        bad = [v for v in (values if self.many else (values,)) if self.choices and v not in self.choices]
        if bad:
            raise ValueError(f"invalid choice: {bad[0]!r} (choose from {', '.join(map(str, self.choices))})")
        return values


def _word(kind, text):
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(text)
        return text.lower() in ("true", "1", "yes")
    return kind(text)


def _settings(cls, from_profile):
    out = []
    for f in fields(cls):
        kind = next(t for t in typing.get_args(f.type) if t is not type(None)) if isinstance(
            f.type, types.UnionType) else f.type  # `str | None` -> str
        many = typing.get_origin(kind) is tuple
        out.append(Setting(f.name, typing.get_args(kind)[0] if many else kind, many,
                           None if from_profile else f.default, f.metadata["help"], f.metadata["choices"],
                           from_profile))
    return out


SETTINGS = _settings(Run, False) + _settings(Protocol, True)
# `mlflow run` opens the run and its experiment itself (--experiment-name)
MLPROJECT_SKIPS = ("experiment",)


def settings_as_parameters(fn):
    """`fn(**settings)` with every setting a typed keyword parameter and its help in the docstring's Args, so that
    Prefect validates each one and shows it in a deployment's run form."""
    fn.__signature__ = inspect.Signature([inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY,
                                                            default=s.flow_default, annotation=s.annotation)
                                          for s in SETTINGS])
    fn.__annotations__ = {n: p.annotation for n, p in fn.__signature__.parameters.items()}
    args = "\n".join(f"    {s.name}: {s.help}" + (" (empty: the profile's value)" if s.from_profile else "")
                     for s in SETTINGS)
    fn.__doc__ = f"{fn.__doc__}\n\nArgs:\n{args}\n"
    return fn


def flow_values(values):
    """Checked command-line values as the flow's parameters: lists for tuples, a setting left out as its flow
    default ('' or [] where the setting's own is None for a text or a list of choices)."""
    defaults = {s.name: s.flow_default for s in SETTINGS}
    return {k: defaults[k] if v is None else list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def mlproject():
    """The MLproject file's text: one entry point for the pipeline (any stage via `until`), one for reports. It
    declares the settings with a value of their own; the others (empty: the profile's value) are passed through
    by `mlflow run` only when given (-P lr=0.003 becomes --lr 0.003), so a run logs no empty parameters."""
    mlflow_type = {float: "float"}  # MLflow types parameters as string, float, path or uri
    shown = [s for s in SETTINGS if s.name not in MLPROJECT_SKIPS and s.default is not None]
    params = "\n".join(f"      {s.name}: {{type: {mlflow_type.get(s.kind, 'string') if not s.many else 'string'}, "
                       f"default: {_yaml(s.default)}}}  # {s.help}" for s in shown)
    command = " ".join(["python -m flows"] + [f"{s.flag} {{{s.name}}}" for s in shown])
    others = ", ".join(s.name for s in SETTINGS if s.name not in MLPROJECT_SKIPS and s.default is None)
    return f"""name: pairs
# Written by `python -m flows mlproject` from flows/settings.py; tests/test_project.py checks it is current.
# Declared below: the settings with a default of their own. Every other setting can be given too, and is
# passed on only when given (empty means the profile's value; lists are comma-separated):
# {others}
# e.g. mlflow run . --env-manager local -P profile=quick -P study=extended -P trials=2 -P batch_sizes=25,100

conda_env: conda.yaml

entry_points:
  main:
    parameters:
{params}
    command: "{command}"
  report:
    parameters:
      run_id: {{type: string}}
    command: "python -m flows report {{run_id}}"
"""


def _yaml(value):
    """A YAML scalar: text quoted (bare, `yes` and `no` would read as booleans)."""
    return '""' if value is None else f'"{value}"' if isinstance(value, str) else str(value)


def make_protocol(profile="full", **overrides):
    """The profile's protocol with the given overrides (None: the profile's); a clear ValueError if invalid."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[profile].with_(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def validate(**values):
    """The settings objects (Run, Protocol, Study) from a call's values, or a ValueError of one clear line. Pure:
    it reads the study file and nothing else, writes nothing, starts nothing."""
    run_names = {f.name for f in fields(Run)}
    unknown = set(values) - {s.name for s in SETTINGS}
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    empty = {s.name: s.flow_default for s in SETTINGS if s.default is None and s.flow_default is not None}
    values = {k: None if k in empty and v == empty[k] else v for k, v in values.items()}  # (the flow's '' and [])
    run = Run(**{k: v for k, v in values.items() if k in run_names})
    for s in SETTINGS[:len(run_names)]:
        if s.choices and getattr(run, s.name) not in s.choices:
            raise ValueError(f"unknown {s.name} {getattr(run, s.name)!r}; choose from {', '.join(s.choices)}")
    study = studies.load(run.study) if run.study else studies.Study("", "", {})
    flags = {k: v for k, v in values.items() if k not in run_names and v is not None}
    searched = {"batch_size": "batch_sizes", "epochs": "epoch_grid", "variant": "variants"}
    both = [searched.get(k, k) for k, _ in study.space if searched.get(k, k) in flags] + [
        k for k in ("batch_sizes", "epoch_grid") if study.arms and k in flags]  # (each arm sets its own)
    if both:
        raise ValueError(f"--{both[0].replace('_', '-')}: the study {study.path} "
                         f"{'sets it in each arm' if study.arms else 'searches it ([search.space])'}; leave the flag "
                         "out, or edit a copy of the study")
    if run.trials is not None:
        if study.method != "optuna":
            raise ValueError("--trials: only a study with an Optuna search has trials (e.g. --study extended)")
        if run.trials < 1:
            raise ValueError(f"trials must be a positive integer, got {run.trials}")
        study = dataclasses.replace(study, trials=run.trials, in_flight=min(study.in_flight, run.trials))
    protocol = make_protocol(run.profile, **study.protocol | flags)
    if study.arms and run.until == "search":
        raise ValueError(f"the study {study.path} has arms and no search: use --until prepare, final or report")
    if not run.experiment:
        raise ValueError("the experiment name must not be empty")
    if run.cluster and run.workers:
        raise ValueError("--cluster and --workers exclude each other: a running cluster, or a local one of N workers")
    for name in ("workers", "chunk"):
        if getattr(run, name) is not None and getattr(run, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(run, name)}")
    try:
        resolve_device(run.device)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    return run, protocol, study
