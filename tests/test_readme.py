"""The README reports the committed results, and its commands are the ones CI runs."""
import json
import re
import statistics

from scripts.results_table import table
from scripts.seed_table import percent
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
SEEDS = json.loads((ROOT / "metrics" / "seeds.json").read_text())  # the committed seed table's summary

# The project's prose documents: the README and the pages it links to
DOCS = (ROOT / "README.md", ROOT / "docs" / "recipe.md", ROOT / "benchmarks" / "README.md",
        ROOT / "benchmarks" / "gpu_h100.md", ROOT / "benchmarks" / "gpu_h200.md")


def first_three_mean(norm: str) -> str:
    """The test-accuracy mean of seeds 0-2 (the headline targets' measure) in percent, as the README prints it."""
    assert SEEDS["seeds"][:3] == [0, 1, 2]
    return f"{100 * statistics.fmean(SEEDS[norm]['test_acc']['values'][:3]):.2f}"


def test_readme_results_table_is_the_committed_metrics():
    assert table(ROOT) in README


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest\n```" in README
    assert ci.strip().splitlines()[-1] == "python -m pytest"
    assert "pip install -r requirements.txt" in README and "-r requirements.txt" in ci


def test_readme_study_tables_are_the_committed_ones():
    for name in ("seeds.md", "batch_size.md", "l1_bn.md", "gn_groups.md", "epochs.md", "weight_std.md"):
        assert (ROOT / "metrics" / name).read_text().strip() in README, name


def test_committed_batch_size_table_is_rendered_from_the_committed_runs():
    from scripts.batch_size_study import markdown, read_rows
    assert markdown(read_rows(ROOT / "metrics" / "batch_size.csv")) == (ROOT / "metrics" / "batch_size.md").read_text()


def test_readme_summary_quotes_the_committed_seed_means():
    """The 'In short' list's seed means are metrics/seeds.json's, to the printed digit: every seed's, and
    the first three seeds' (the targets' measure)."""
    short = " ".join(README.split("**In short**", 1)[1].split("\n\n", 1)[0].split())
    for norm in ("bn", "gn", "ln"):
        quoted = f"{norm.upper()} {percent(SEEDS[norm]['test_acc'])}"
        assert quoted in short, quoted
    assert f"means of seeds 0-2: {first_three_mean('bn')}, {first_three_mean('gn')} and {first_three_mean('ln')} %" in short


def test_relative_links_in_the_docs_point_to_files_that_exist():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"


def test_readme_anchors_name_its_headings():
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", README, flags=re.M)}
    for anchor in re.findall(r"\]\(#([^)]+)\)", README):
        assert anchor in anchors, anchor


def test_every_table_ends_before_the_text_that_follows():
    """A line right after a markdown table would render as one more row of it."""
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for number, (before, line) in enumerate(zip(lines, lines[1:]), start=2):
            assert not (before.startswith("|") and line.strip() and not line.startswith("|")), \
                f"{doc.relative_to(ROOT)}:{number}: text directly after a table"


def test_readme_targets_quote_the_first_three_seeds():
    """The targets are 3-seed means: the table's accuracy rows quote seeds 0-2 of metrics/seeds.json."""
    for norm, target in (("bn", 85), ("gn", 83), ("ln", 82)):
        assert f"| {norm.upper()} >= {target} % (mean of 3 seeds) | {first_three_mean(norm)} % (" in README, norm
