"""Study files: a study is a small TOML file naming its protocol and either a search or fixed arms.

    description = "what it asks"
    history = "what was fixed by hand, when, after seeing what"   # optional, said in the report as written
    headline = "arm name"  # arms: the arm whose number is the result, declared before the run
    [protocol]            # any Protocol setting (counts, grid, training options, variants); the rest: the profile's
    final_rounds = 20
    [search]              # optional: without it, the protocol's own grid (batch_sizes x epoch_grid)
    method = "grid"       # every combination of the space, beside batch_sizes, scored at every epoch count
    budget = 24           # the most candidates per architecture the grid may have
    [search.space]        # Training options searched, each a non-empty list of values; also `variant`
    normalize = [false, true]   # (variants of the searched architectures), `batch_size` and `epochs`

    [search]              # or: Optuna (TPE), per architecture, `in_flight` trials at once (a new one asked as one ends)
    method = "optuna"
    trials = 24           # trials per architecture
    in_flight = 4         # (its old name, `batch`, is still read)
    [search.space]        # lists are categorical; a range is {low = 1e-4, high = 1e-2, log = true}
    lr = {low = 3e-4, high = 3e-3, log = true}

    [final]               # optional, with a search: options changed for the final rounds only
    ensemble = 3          # e.g. select single models, then evaluate (and deploy) ensembles of the selection

    [[arm]]               # or, instead of a search: fixed configurations, all on the same final rounds
    name = "faithful"     # the first arm sets batch_size and epochs per architecture
    ConvNet = {batch_size = 100, epochs = 50}
    MLP = {batch_size = 25, epochs = 50}
    [[arm]]
    name = "standardised inputs"
    normalize = true      # for every architecture; `MLP = {epochs = 25}` for one

Selection is made on cross-validation folds of the training pairs only (pairs.protocol). Every mistake
in a file is one line naming the file, the key and what is allowed, raised before any work.
"""
import itertools
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .models import ARCHITECTURES, VARIANTS, architecture
from .protocol import Protocol
from .config import FitConfig, Training

SHIPPED = Path(__file__).resolve().parent.parent / "studies"
METHODS = ("grid", "optuna")
OPTIONS = tuple(f.name for f in fields(Training))
FIT = ("batch_size", "epochs")
SEARCHED = OPTIONS + FIT + ("variant",)


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class Study:
    path: str
    description: str
    protocol: dict  # Protocol settings from the file
    space: tuple = ()  # ((option, (values...) or {low, high, log}), ...): searched beside batch size and epochs
    arms: tuple = ()  # ((name, {architecture: {batch_size, epochs, options...}}), ...): no search
    method: str = "grid"
    trials: int = 0  # optuna: trials per architecture
    in_flight: int = 1  # optuna: trials in flight per architecture (more on a Dask cluster with more workers)
    final: dict = field(default_factory=dict)  # Training options set on the selection for the final rounds
    headline: str = ""  # arms: the arm whose number is the study's result, declared before the run
    history: str = ""  # what was fixed by hand, when, and what had been seen then (said in the report as written)

    def candidates(self):
        """The option combinations of the search space ({} when it has none)."""
        names = [n for n, _ in self.space]
        return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in self.space))]

    def typical(self):
        """A candidate of the search space (first values, range lows; the variant left to each architecture): how
        many groups a trial trains, for the progress total before the trial is asked."""
        return {name: values["low"] if isinstance(values, dict) else values[0] for name, values in self.space
                if name != "variant"}

    def suggest(self, trial, arch):
        """An Optuna trial's candidate for one architecture (the variants of that architecture only)."""
        out = {}
        for name, values in self.space:
            if isinstance(values, dict):
                ints = all(isinstance(values[k], int) for k in ("low", "high"))
                out[name] = (trial.suggest_int if ints else trial.suggest_float)(
                    name, values["low"], values["high"], log=values.get("log", False))
            else:
                out[name] = trial.suggest_categorical(name, [v for v in values if name != "variant"
                                                             or architecture(v) == arch])
        return out


def shipped():
    """The names of the studies in studies/."""
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def resolve(name_or_path):
    """A shipped study's name (`al_gap`) or a path to a file."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SHIPPED / f"{name_or_path}.toml"
    if not path.is_file():
        raise StudyError(f"study {name_or_path}: no such file; shipped studies: {', '.join(shipped())}")
    return path


def load(name_or_path):
    """Read and check a study file; StudyError names the file, the key and what is allowed."""
    path = resolve(name_or_path)

    def fail(key, message):
        raise StudyError(f"{path}: {key}: {message}")

    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise StudyError(f"{path}: not valid TOML ({e})") from None
    _only(doc, ("description", "history", "headline", "protocol", "search", "arm", "final"), "", fail)
    for key in ("description", "history", "headline"):
        if not isinstance(doc.get(key, ""), str):
            fail(key, f"must be a string, got {doc[key]!r}")
    protocol = doc.get("protocol", {})
    _only(protocol, [f.name for f in fields(Protocol)], "protocol.", fail)
    protocol = {k: tuple(v) if isinstance(v, list) else v for k, v in protocol.items()}
    try:
        Protocol(**protocol)
    except (TypeError, ValueError) as e:
        word = str(e).split()[0]
        fail("protocol" + (f".{word}" if word in protocol else ""), str(e))
    if "search" in doc and "arm" in doc:
        fail("arm", "a study has either a [search] or arms, not both")
    study = Study(str(path), doc.get("description", ""), protocol, history=doc.get("history", ""))
    final = doc.get("final", {})
    _only(final, OPTIONS, "final.", fail)
    _check_options(final, "final", fail)
    if final and "arm" in doc:
        fail("final", "a study of arms sets its options in each arm")
    study = replace(study, final=final)
    if "search" in doc:
        return _search(study, doc["search"], fail)
    if "arm" in doc:
        study = _arms(study, doc["arm"], fail)
    if doc.get("headline"):
        if doc["headline"] not in [name for name, _ in study.arms]:
            fail("headline", f"{doc['headline']!r} is not an arm of this study; arms: "
                             f"{', '.join(name for name, _ in study.arms) or 'none'}")
        study = replace(study, headline=doc["headline"])
    return study


def _only(table, allowed, prefix, fail):
    for key in table:
        if key not in allowed:
            fail(prefix + key, f"unknown key; allowed: {', '.join(allowed)}")


def _check_options(options, key, fail):
    try:
        FitConfig("ConvNet", **options)
    except (TypeError, ValueError) as e:
        fail(key, str(e))


def _search(study, search, fail):
    if "batch" in search and "in_flight" not in search:  # the key's old name, still read
        search = {("in_flight" if k == "batch" else k): v for k, v in search.items()}
    _only(search, ("method", "budget", "space", "trials", "in_flight"), "search.", fail)
    method = search.get("method", "grid")
    if method not in METHODS:
        fail("search.method", f"{method!r} is not a method; allowed: {', '.join(METHODS)}")
    for key in ("budget", "trials", "in_flight"):
        value = search.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            fail(f"search.{key}", f"must be a positive integer, got {value!r}")
    if method == "optuna" and "trials" not in search:
        fail("search.trials", "an optuna search needs the number of trials per architecture")
    if method == "grid" and ("trials" in search or "in_flight" in search):
        fail("search.trials" if "trials" in search else "search.in_flight", "only an optuna search has trials")
    protocol = Protocol(**study.protocol)
    space = search.get("space", {})
    _only(space, SEARCHED, "search.space.", fail)
    for name, values in space.items():
        key = f"search.space.{name}"
        if isinstance(values, dict) and method == "optuna":
            _only(values, ("low", "high", "log"), key + ".", fail)
            low, high = values.get("low"), values.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
                fail(key, f"a range needs numbers low < high, got low={low!r}, high={high!r}")
            if values.get("log") and low <= 0:
                fail(key, f"a log range needs low > 0, got {low!r}")
            values = [low, high]
        elif not isinstance(values, list) or not values:
            fail(key, f"must be a non-empty list of values{' or a range {low, high, log}' * (method == 'optuna')}, "
                      f"got {values!r}")
        elif len(values) == 1:
            fail(key, f"one value is not a search: set it in [protocol] ({name} = {values[0]!r})")
        for v in values:
            _check_value(protocol, name, v, key, fail)
    if "variant" in space:
        missing = [a for a in protocol.architectures if not any(architecture(v) == a for v in space["variant"])]
        if missing:
            fail("search.space.variant", f"no variant of {', '.join(missing)}, a searched architecture")
    space = tuple((n, v if isinstance(v, dict) else tuple(v)) for n, v in space.items())
    study = replace(study, space=space, method=method, trials=search.get("trials", 0),
                    in_flight=search.get("in_flight", 1))
    if method == "grid":
        grid = len(study.candidates()) * len(study.protocol.get("batch_sizes", Protocol().batch_sizes))
        if search.get("budget") is not None and grid > search["budget"]:
            fail("search.budget", f"the grid has {grid} candidates per architecture, more than the budget "
                                  f"{search['budget']}")
    return study


def _check_value(protocol, name, value, key, fail):
    if name == "variant":
        if value not in VARIANTS or architecture(value) not in protocol.architectures:
            fail(key, f"{value!r} is not a variant of the searched architectures "
                      f"({', '.join(protocol.architectures)}); variants: {', '.join(VARIANTS)}")
    elif name in FIT:
        try:
            protocol.with_(**{{"batch_size": "batch_sizes", "epochs": "epoch_grid"}[name]: (value,)})
        except (TypeError, ValueError) as e:
            fail(key, str(e))
    else:
        _check_options({name: value}, key, fail)


def _arms(study, arms, fail):
    allowed = OPTIONS + FIT + ARCHITECTURES
    resolved, names = [], set()
    for i, arm in enumerate(arms):
        key = f"arm[{i}]"
        name = arm.get("name")
        if not isinstance(name, str) or not name or name in names:
            fail(f"{key}.name", "each arm needs a name of its own")
        names.add(name)
        _only({k: v for k, v in arm.items() if k != "name"}, allowed, f"{key}.", fail)
        shared = {k: v for k, v in arm.items() if k not in ARCHITECTURES + ("name",)}
        per = {}
        for a in ARCHITECTURES:
            own = arm.get(a, {})
            _only(own, OPTIONS + FIT, f"{key}.{a}.", fail)
            per[a] = (resolved[0][1][a] if resolved else {}) | shared | own
            if not all(k in per[a] for k in FIT):
                fail(f"{key}.{a}", "the first arm must give batch_size and epochs for every architecture")
            _check_options({k: v for k, v in per[a].items() if k in OPTIONS}, f"{key}.{a}", fail)
            for k in FIT:
                if not isinstance(per[a][k], int) or per[a][k] < 1:
                    fail(f"{key}.{a}.{k}", f"must be a positive integer, got {per[a][k]!r}")
        resolved.append((name, per))
    if not resolved:
        fail("arm", "at least one arm is needed")
    return replace(study, arms=tuple(resolved))
