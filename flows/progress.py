"""Progress lines of a pipeline call: stage, group, epoch, fits done and the ETA of the whole call, after each
group and, while one trains, every PROGRESS_EVERY seconds. They go to the console and the flow run's logs."""
import time

from pairs.groups import final_groups, search_groups
from pairs.protocol import selection_of

PROGRESS_EVERY = 20  # seconds between progress lines while a group trains


def work(groups):
    """Fit-epochs of training in these groups."""
    return sum(len(g.fits) * g.fits[0].config.epochs for g in groups)


def planned(protocol, study, run):
    """What a call plans to train, for the totals: the search's groups (an Optuna search: each trial those of a
    typical candidate) and the final stage's under a stand-in selection (the real ones replace both later)."""
    candidates = study.candidates() if study.method == "grid" else [study.typical()] * study.trials
    search = search_groups(protocol, candidates)
    guessed = [] if run.until == "search" else final_groups(protocol, selection_of({a: {
        "batch_size": min(protocol.batch_sizes), "epochs": max(protocol.epoch_grid)} | (
        {"variant": a} if "variant" in dict(study.space) else {}) | study.final for a in protocol.architectures}))
    return search, guessed


class Progress:
    def __init__(self, groups):
        """`groups`: what the call plans to train; `plan` puts the real groups in place of estimated ones."""
        self.work, self.fits, self.done, self.fits_done = work(groups), sum(len(g.fits) for g in groups), 0, 0
        self.began = self.last = time.time()
        self.trained = {}  # fit-epochs trained in this process, per group label

    def plan(self, groups, instead_of=()):
        """Groups now planned, in place of those the totals had estimated (an Optuna batch once it is asked)."""
        self.work += work(groups) - work(instead_of)
        self.fits += sum(len(g.fits) for g in groups) - sum(len(g.fits) for g in instead_of)

    def epoch(self, group, epoch, epochs, n):
        """n fits of `group` have trained their epoch-th epoch (called from the thread that trains it)."""
        self.done += n
        self.trained[group.label] = self.trained.get(group.label, 0) + n
        if time.time() - self.last >= PROGRESS_EVERY:
            self._say(group, f"epoch {epoch}/{epochs}")

    def part_done(self, group, cached):
        trained = self.trained.pop(group.label, 0)
        if cached:  # a cached group trains nothing: its work leaves the estimate
            self.work -= work([group]) - trained
        else:  # a group trained elsewhere (a Dask worker) reported no epochs here
            self.done += work([group]) - trained
        self.fits_done += len(group.fits)
        self._say(group, "from the cache" if cached else "done")

    def _say(self, group, what):
        elapsed = time.time() - self.began
        eta = f"{elapsed / self.done * max(self.work - self.done, 0):.0f} s" if self.done else "?"
        print(f"[{group.fits[0].stage}] {group.label}: {what}; {self.fits_done}/{self.fits} fits done, "
              f"elapsed {elapsed:.0f} s, ETA {eta}", flush=True)
        self.last = time.time()
