"""The model registry: which pipeline registers a model, what its version says, and when `champion` moves.

- Every pipeline with a search registers a new version (`--register-model yes`, the default; `no` registers
  nothing), smoke runs too, so that the first try's model can be served: `models:/pairs-best/latest` is the
  newest version, whichever run registered it; `models:/pairs-best/N` is version N.
- A quick-profile run, or one with fewer pairs, rounds or folds than its study (the full profile with the study
  file's [protocol]), is a smoke run: its version says so (tag `smoke`, description) and never takes `champion`.
- The version is round 0's model of the selected configuration with the lowest CV error; its tags say the
  study, profile, counts, selection, CV error and test errors, and its description says the same in words.
- The alias `champion` (`models:/pairs-best@champion`) moves to a new version when none holds it, or when the
  holder was selected under the same cross-validation (same pairs, rounds, folds and base seed: the same folds)
  with a higher CV error. CV errors of different protocols are not compared: the holder keeps the alias.
"""
import json
from pathlib import Path

from pairs.models import architecture
from pairs.protocol import options_text
from pairs.selection import search_table

REGISTERED = "pairs-best"
DESCRIPTION = ("The best selected configuration of a pairs pipeline: two 14x14 MNIST digits in (float32, N x 2 x "
               "14 x 14, raw pixels 0..255), [P(first > second), P(first <= second)] out. Each version's tags name "
               "its study, profile, counts and selection; `champion` is the best by CV error among versions "
               "selected under the same cross-validation (see flows/registry.py).")


def smoke_reason(protocol, reference, profile):
    """Why a run is a smoke run (the quick profile, or counts below its study's), or '' for a full run."""
    if profile == "quick":
        return "the quick profile"
    low = [f"{k} {getattr(protocol, k)} < {getattr(reference, k)}" for k in ("pairs", "search_rounds", "folds",
                                                                             "final_rounds")
           if getattr(protocol, k) < getattr(reference, k)]
    return "counts below the study's: " + ", ".join(low) if low else ""


def register(call, search, final, selection):
    """The call's registry step: register (and maybe promote) its best model, or say why not."""
    if call.run.register_model == "yes":
        return register_champion(call, search, final, selection)
    print("[registry] not registered (--register-model no)", flush=True)


def cv_protocol(protocol):
    """What makes two CV errors comparable: the same pairs, rounds, folds and seed (so the same folds)."""
    return f"pairs={protocol.pairs} search_rounds={protocol.search_rounds} folds={protocol.folds} seed={protocol.seed}"


def register_champion(call, search, final, selection):
    """Register round 0's model of the selected configuration with the lowest CV error (`final`: the final stage's
    plan, its groups and their records); move `champion` by the rule above. Prints one line saying what happened
    and why."""
    tracker, protocol, smoke, profile = call.tracker, call.protocol, call.smoke, call.run.profile
    rows = search_table(search)
    cv = {a: min(r["val_error_mean"] for r in rows if r["architecture"] == a and all(
        r.get(k) == v for k, v in c.as_dict().items() if k in r)) for a, c in selection.items()}
    kept = {architecture(g.fits[0].variant): g for g in final.groups if g.keep}  # selections the final rounds ran
    if not kept:
        return
    arch = min(kept, key=cv.get)
    group = kept[arch]
    fit = group.fits[0]
    run_id = tracker.fit_runs.get(fit.key(call.context))
    if run_id is None:
        return
    errors = {r.key(): r.final_errors[1] for r in final.records}
    test = [errors[f.key()] for f in group.fits]
    study_name = Path(call.study.path).stem or "profile grid"
    tags = {"cv_error": cv[arch], "test_error": test[0], "test_error_mean": sum(test) / len(test),
            "rounds": len(test), "variant": fit.variant, "study": study_name, "profile": profile,
            "pairs": protocol.pairs, "search_rounds": protocol.search_rounds, "folds": protocol.folds,
            "final_rounds": protocol.final_rounds, "cv_protocol": cv_protocol(protocol),
            "selection": json.dumps(selection[arch].as_dict(), sort_keys=True), "smoke": smoke or "no",
            "pipeline_run": tracker.run_id}
    options = options_text(fit.config)
    description = (f"{fit.variant}{' ' + options if options else ''}, batch {fit.config.batch_size}, "
                   f"{fit.config.epochs} epochs; study {study_name}, profile {profile}: CV error {100 * cv[arch]:.2f}% "
                   f"({cv_protocol(protocol)}), test error {100 * tags['test_error_mean']:.2f}% mean over "
                   f"{len(test)} final rounds (this model: round 0, {100 * test[0]:.2f}%)"
                   + (f". Smoke run ({smoke}): never the champion." if smoke else "."))

    def promote(holder):
        """(take the alias, why) given the version holding `champion` now (None: none)."""
        if smoke:
            return False, f"not champion: a smoke run ({smoke})"
        if holder is None:
            return True, "alias champion (none held it)"
        if holder.tags.get("cv_protocol") != tags["cv_protocol"]:
            return False, (f"champion stays version {holder.version}: selected under another cross-validation "
                           f"({holder.tags.get('cv_protocol', 'not recorded')}), so the CV errors are not compared")
        held = float(holder.tags["cv_error"])
        return (True, f"alias champion (version {holder.version} had CV error {100 * held:.2f}%)") if held > cv[arch] \
            else (False, f"champion stays version {holder.version} (CV error {100 * held:.2f}%)")
    version, verdict = register_version(tracker, run_id, REGISTERED, tags, description, DESCRIPTION, promote)
    if version is None:
        print(f"[registry] {REGISTERED}: this pipeline's model is registered already", flush=True)
        return
    print(f"[registry] {REGISTERED} version {version.version}: {fit.variant}, CV error {100 * cv[arch]:.2f}%, "
          f"round 0 test error {100 * test[0]:.2f}%; {verdict}; models:/{REGISTERED}/{version.version} "
          f"(models:/{REGISTERED}/latest until a newer one)", flush=True)


def register_version(tracker, run_id, name, tags, description, model_description, promote):
    """Register the fit run's model as a new version of `name` (with the model's description, once); the
    alias `champion` moves to it when `promote(holder)` says so (holder: the version holding it, or None).
    Returns (version, why), or (None, None) when this run's model is registered already."""
    import mlflow

    uri = tracker.client.get_run(run_id).data.tags["pairs.model_uri"]
    mlflow.set_tracking_uri(tracker.uri)
    with tracker.lock():
        if tracker.client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'"):
            return None, None  # a rerun of a finished pipeline
        version = mlflow.register_model(uri, name, tags={k: str(v) for k, v in tags.items()})
        tracker.client.update_model_version(name, version.version, description=description)
        if not tracker.client.get_registered_model(name).description:
            tracker.client.update_registered_model(name, description=model_description)
        try:
            holder = tracker.client.get_model_version_by_alias(name, "champion")
        except mlflow.exceptions.MlflowException:
            holder = None
        take, why = promote(holder)
        if take:
            tracker.client.set_registered_model_alias(name, "champion", version.version)
    return version, why
