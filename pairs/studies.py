"""Study files: a study is a small TOML file naming its protocol and either a search or fixed arms.

    description = "what it asks"
    [protocol]            # any Protocol setting (counts, grid, training options, variants); the rest: the profile's
    final_rounds = 20
    [search]              # optional: without it, the protocol's own grid (batch_sizes x epochs)
    method = "grid"       # every combination of the space, beside batch_sizes, scored at every epoch count
    budget = 24           # the most candidates per architecture the grid may have
    [search.space]        # Training options searched, each a non-empty list of values
    normalize = [false, true]

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
from dataclasses import dataclass, fields
from pathlib import Path

from .models import ARCHITECTURES
from .protocol import Protocol
from .train import FitConfig, Training

SHIPPED = Path(__file__).resolve().parent.parent / "studies"
METHODS = ("grid",)
OPTIONS = tuple(f.name for f in fields(Training))
FIT = ("batch_size", "epochs")


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class Study:
    path: str
    description: str
    protocol: dict  # Protocol settings from the file
    space: tuple = ()  # ((option, (values...)), ...): searched beside batch size and epochs
    arms: tuple = ()  # ((name, {architecture: {batch_size, epochs, options...}}), ...): no search

    def candidates(self):
        """The option combinations of the search space ({} when it has none)."""
        names = [n for n, _ in self.space]
        return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in self.space))]


def resolve(name_or_path):
    """A shipped study's name (`al_gap`) or a path to a file."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SHIPPED / f"{name_or_path}.toml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.toml")))
        raise StudyError(f"study {name_or_path}: no such file; shipped studies: {shipped}")
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
    _only(doc, ("description", "protocol", "search", "arm"), "", fail)
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
    study = Study(str(path), doc.get("description", ""), protocol)
    if "search" in doc:
        return _search(study, doc["search"], fail)
    if "arm" in doc:
        return _arms(study, doc["arm"], fail)
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
    _only(search, ("method", "budget", "space"), "search.", fail)
    if search.get("method", "grid") not in METHODS:
        fail("search.method", f"{search['method']!r} is not a method; allowed: {', '.join(METHODS)}")
    budget = search.get("budget")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        fail("search.budget", f"must be a positive integer, got {budget!r}")
    space = search.get("space", {})
    _only(space, OPTIONS, "search.space.", fail)
    for name, values in space.items():
        if not isinstance(values, list) or not values:
            fail(f"search.space.{name}", f"must be a non-empty list of values, got {values!r}")
        if len(values) == 1:
            fail(f"search.space.{name}", f"one value is not a search: set it in [protocol] ({name} = {values[0]!r})")
        for v in values:
            _check_options({name: v}, f"search.space.{name}", fail)
    study = Study(study.path, study.description, study.protocol, tuple((n, tuple(v)) for n, v in space.items()))
    grid = len(study.candidates()) * len(study.protocol.get("batch_sizes", Protocol().batch_sizes))
    if budget is not None and grid > budget:
        fail("search.budget", f"the grid has {grid} candidates per architecture, more than the budget {budget}")
    return study


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
    return Study(study.path, study.description, study.protocol, arms=tuple(resolved))
