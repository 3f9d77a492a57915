"""The published results (docs/results/...): each folder rebuilds, byte for byte, from the fit records and the
run.json it holds (`python -m flows report --from FOLDER`), so every number in them can be recomputed."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ["docs/results", "docs/results/al_gap", "docs/results/extended", "docs/results/precision",
           "docs/results/confirm"]
BESIDE = {"docs/results/extended/beside": ["docs/results/al_gap", "docs/results/extended"]}


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_published_folder_rebuilds_from_its_records(folder, tmp_path):
    from flows.report import from_folder
    written = {p.name for p in from_folder(ROOT / folder, tmp_path) if p.suffix in (".md", ".csv", ".svg")}
    published = sorted(p.name for p in (ROOT / folder).iterdir() if p.suffix in (".md", ".csv", ".svg"))
    assert "REPORT.md" in published and set(published) == written, (published, written)  # nothing stale beside
    for name in published:
        assert (tmp_path / name).read_text() == (ROOT / folder / name).read_text(), \
            f"{folder}/{name} differs from what its records give: python -m flows report --from {folder}"


@pytest.mark.parametrize("folder", BESIDE)
def test_the_final_rounds_beside_each_other_rebuild_from_the_folders_records(folder, tmp_path):
    from flows.report import beside_folders
    written = {p.name for p in beside_folders([ROOT / f for f in BESIDE[folder]], tmp_path)}
    published = sorted(p.name for p in (ROOT / folder).iterdir())
    assert set(published) == written, (published, written)
    for name in (n for n in published if n.endswith((".md", ".csv"))):
        assert (tmp_path / name).read_text() == (ROOT / folder / name).read_text(), \
            f"{folder}/{name} differs from what its folders' records give: python -m flows report " + " ".join(
                f"--from {f}" for f in BESIDE[folder]) + f" --out {folder}"


def test_the_readmes_numbers_are_in_the_reports_they_cite():
    """Every number in the README's results paragraph is in a published REPORT.md (or beside.md): the paragraph
    quotes the reports, it does not compute or round anew."""
    import re
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- results -->")[1].split("<!-- /results -->")[0]
    reports = "".join(p.read_text() for p in (ROOT / "docs" / "results").glob("**/*.md"))
    numbers = re.findall(r"[+-]?\d+\.\d+%?|\d+%", block)
    assert len(numbers) > 5, block
    missing = [n for n in numbers if n not in reports]
    assert not missing, f"README numbers not in any docs/results report: {missing}"
