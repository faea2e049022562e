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


# -- the README's commands ----------------------------------------------------------------------
COMMAND = re.compile(r"(\./run\.sh python (train|eval)\.py|clipdistill (train|eval|filter)|"
                     r"\./run\.sh python -m gcd\.filter)\s")
# The resume section writes "-c <same files>" for the command just before it.
SAME_FILES = "configs/experiment/b2n_coop_kdpl_vit_b32_pets.yaml"


def commands_in(text: str) -> list[str]:
    """The train / eval / filter commands of a code block: continuation lines joined, trailing
    comments dropped."""
    lines = (re.split(r"\s+#", line)[0].strip() for line in re.sub(r"\\\n\s*", " ", text).splitlines())
    return [line for line in lines if COMMAND.match(line + " ")]


def readme_commands() -> list[str]:
    commands, block, inside = [], [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            if inside:
                commands += commands_in("\n".join(block))
            block, inside = [], not inside
        elif inside:
            block.append(line)
    return commands


def help_text_commands() -> list[str]:
    """The examples of the command-line help texts (the clipdistill modules' docstrings)."""
    import ast

    return [c for path in sorted((REPO / "clipdistill").rglob("*.py"))
            for c in commands_in(ast.get_docstring(ast.parse(path.read_text())) or "")]


def config_of(command: str) -> tuple[list[str], list[str]]:
    """The ``-c`` files and ``key=value`` overrides of a command line."""
    import shlex

    words = shlex.split(command.replace("-c <same files>", f"-c {SAME_FILES}").replace("-c ...", f"-c {SAME_FILES}"))
    files = [words[i + 1] for i, w in enumerate(words) if w in ("-c", "--config")]
    overrides = [w for w in words if "=" in w and not w.startswith("-")]
    return files, overrides


def test_the_commands_of_the_readme_and_the_help_texts_give_valid_configs():
    """Every train / eval / filter command in the README and in the help texts, as printed, names
    existing configs and only keys its method reads, with values of the right type (checked
    without running it)."""
    from clipcore.config import ConfigError
    from clipdistill.app import load_run_config

    commands = readme_commands() + help_text_commands()
    assert len(commands) >= 35 and any("<same files>" in c for c in commands)
    checked, failures = 0, []
    for command in commands:
        if any(flag in command.split() for flag in ("--ckpt", "--export", "--help")):
            continue  # their config comes from a checkpoint or an export
        files, overrides = config_of(command)
        try:
            load_run_config(files, overrides)
            checked += 1
        except ConfigError as exc:
            failures.append(f"{command}\n    {exc}")
    assert not failures, "\n".join(failures)
    assert checked >= 25
