"""The README and the manual: the site builds with no warning (a results file a page includes and cannot find fails
it), the README stays a door into it, and the architecture page draws the asset graph the code defines."""

import re
import subprocess
import sys
from pathlib import Path

from threadembed_assets.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
GROUP_ORDER = ("raw", "warehouse", "summaries", "pairs", "training", "benchmark", "search")


def asset_graph_mermaid() -> str:
    """The asset graph as a Mermaid flowchart: one box per Dagster group, in pipeline order, edges sorted."""
    graph = defs.resolve_asset_graph()
    keys = sorted(graph.get_all_asset_keys(), key=lambda key: key.to_user_string())
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
    lines = ["flowchart LR"]
    for group in sorted(groups, key=lambda name: (GROUP_ORDER + (name,)).index(name)):
        lines += [f"  subgraph {group}", *(f"    {name}" for name in groups[group]), "  end"]
    edges = sorted(
        (parent.to_user_string(), key.to_user_string()) for key in keys for parent in graph.get(key).parent_keys
    )
    lines += [f"  {parent} --> {child}" for parent, child in edges]
    return "\n".join(lines)


def test_the_manual_builds_with_no_warning(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "pipeline" / "chat-ranker" / "index.html").exists()


def test_the_readme_is_a_door_into_the_manual():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    assert "make run" in readme and "make test" in readme
    linked = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert linked and all((ROOT / path).exists() for path in linked), [p for p in linked if not (ROOT / p).exists()]
    pages = {str(page.relative_to(ROOT)) for page in (ROOT / "docs").rglob("*.md") if "results" not in page.parts}
    assert pages <= set(linked), f"pages the README does not link: {sorted(pages - set(linked))}"


def test_the_architecture_page_draws_the_asset_graph_the_code_defines():
    page = (ROOT / "docs" / "architecture.md").read_text()
    drawn = re.search(r"```mermaid\n(.*?)\n```", page, re.DOTALL)
    expected = asset_graph_mermaid()
    assert drawn is not None and drawn.group(1) == expected, f"docs/architecture.md should draw:\n{expected}"


def test_the_readme_shows_the_make_run_summary_its_results_file_holds():
    """The `make run` output the README shows is the summary `make run WRITE=docs/results/make_run.md` wrote (with
    its date, command and commit), the one the manual includes, not a copy that drifts from it."""
    written = (ROOT / "docs" / "results" / "make_run.md").read_text()
    summary = written.split("```\n")[1]
    assert summary.startswith("run ") and "seconds per step (" in summary
    assert summary in (ROOT / "README.md").read_text()
    assert '--8<-- "results/make_run.md"' in (ROOT / "docs" / "getting-started.md").read_text()
