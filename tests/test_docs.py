"""What the README and the help texts name exists: every ``configs/...yaml`` they mention."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG_PATH = re.compile(r"configs/[A-Za-z0-9_/.-]+\.yaml")  # placeholders such as <name> are skipped
# Files the README shows being added (the extension guide).
EXAMPLES = {"configs/method/myprompt.yaml"}


def documents() -> list[Path]:
    sources = [REPO / "README.md", *(REPO / "benchmarks").glob("*.md")]
    for package in ("clipcore", "kdpl", "gcd", "clipdistill", "benchmarks"):
        sources += sorted((REPO / package).rglob("*.py"))
    sources += [REPO / "train.py", REPO / "eval.py", REPO / "demo.py"]
    return [*sources, *sorted((REPO / "configs").rglob("*.yaml"))]


def test_every_config_file_named_in_docs_and_help_texts_exists():
    missing = sorted({f"{path.relative_to(REPO)}: {name}" for path in documents()
                      for name in CONFIG_PATH.findall(path.read_text())
                      if not (REPO / name).is_file() and name not in EXAMPLES})
    assert not missing, "\n".join(missing)


SHIPPED_NAME = re.compile(r"-c\s+([A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+\.yaml)")


def test_every_shipped_config_name_given_to_dash_c_exists():
    """`-c trainer/cpu.yaml` (a shipped name, not a path) in the README and the help texts."""
    from clipcore.config import find_config_file
    from clipdistill.app import register_config_sections

    register_config_sections()
    named = {name for path in documents() for name in SHIPPED_NAME.findall(path.read_text())
             if not name.startswith(("configs/", "/", "."))}
    assert {"trainer/cpu.yaml", "method/coop.yaml"} <= named
    assert sorted(n for n in named if find_config_file(n) is None) == []
