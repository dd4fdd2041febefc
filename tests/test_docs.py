"""The documentation matches the code: the configuration reference, the README quick start,
the documented BOSS configs and the docs that the README links to.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import tomllib
from pathlib import Path

import pytest

from herocollector.actor.archiver import CollectorArchiver

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
REFERENCE = DOCS / "configuration.md"
QUICK_START = ("python3 run.py demo", "python3 run.py test")
ROW = re.compile(r"^\|\s*`([A-Za-z_][A-Za-z0-9_]*)`\s*\|")


def code_arguments() -> dict[str, inspect.Parameter]:
    """The configuration arguments: ``CollectorArchiver.__init__`` without self, *args, **kwargs."""
    parameters = inspect.signature(CollectorArchiver.__init__).parameters
    return {
        name: p
        for name, p in parameters.items()
        if name != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


def reference_rows() -> dict[str, list[str]]:
    """The rows of the argument table in docs/configuration.md, by argument name."""
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("## Arguments", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} is documented twice"
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            rows[match.group(1)] = cells
    return rows


def test_every_documented_argument_exists() -> None:
    documented = set(reference_rows())
    assert documented, "no argument table found in docs/configuration.md"
    unknown = documented - set(code_arguments())
    assert not unknown, f"docs/configuration.md documents arguments the code does not have: {sorted(unknown)}"


def test_every_argument_is_documented() -> None:
    missing = set(code_arguments()) - set(reference_rows())
    assert not missing, f"arguments missing from docs/configuration.md: {sorted(missing)}"


def test_reference_is_in_signature_order_with_defaults() -> None:
    rows = reference_rows()
    assert list(rows) == list(code_arguments())
    for name, parameter in code_arguments().items():
        cells = rows[name]
        assert len(cells) == 4, f"row of {name} must have 4 cells (argument, default, description, example)"
        default = cells[1]
        if parameter.default is inspect.Parameter.empty:
            assert default == "required", f"{name} has no default in the code"
        else:
            expected = f"`{json.dumps(parameter.default)}`"
            assert expected in default, f"{name}: the code's default is {parameter.default!r}"
        assert cells[2] and cells[3], f"{name} needs a description and an example"


def test_readme_quick_start_commands() -> None:
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert block, "the quick start needs a sh code block"
    assert [line.strip() for line in block.group(1).strip().splitlines()] == list(QUICK_START)
    script = (ROOT / "run.py").read_text(encoding="utf-8")
    assert '"demo":' in script and '"test":' in script


@pytest.mark.parametrize("config", sorted((ROOT / "boss_configs").glob("*.json")), ids=lambda p: p.name)
def test_boss_config_arguments_are_real_parameters(config: Path) -> None:
    document = json.loads(config.read_text(encoding="utf-8"))
    module_name, _, class_name = document["classname"].rpartition(".")
    module = __import__(module_name, fromlist=[class_name])
    cls = getattr(module, class_name)
    parameters = inspect.signature(cls.__init__).parameters
    unknown = set(document["arguments"]) - set(parameters)
    assert not unknown, f"{config.name} passes arguments {cls.__name__} does not take: {sorted(unknown)}"
    required = {
        n
        for n, p in parameters.items()
        if n != "self"
        and p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    missing = sorted(required - set(document["arguments"]))
    assert not missing, f"{config.name} lacks the required arguments {missing}"


def test_collector_config_is_the_one_in_the_docs() -> None:
    config = json.loads((ROOT / "boss_configs" / "collector.json").read_text(encoding="utf-8"))
    for doc in (README, REFERENCE):
        blocks = re.findall(r"```json\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
        assert config in [json.loads(b) for b in blocks], f"{doc.name} does not show boss_configs/collector.json"


def test_docs_exist_and_readme_links_resolve() -> None:
    for name in ("architecture.md", "format.md", "configuration.md", "operations.md", "troubleshooting.md"):
        assert (DOCS / name).is_file(), name
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text(encoding="utf-8")):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"


def test_documented_cli_options_exist() -> None:
    from herocollector.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    options = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.items()}
    text = "".join(p.read_text(encoding="utf-8") for p in (README, DOCS / "operations.md", DOCS / "troubleshooting.md"))
    for command, flags in re.findall(r"herocollector (collect|inspect|cleanup|demo)\b([^\n`]*)", text):
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", flags):
            assert flag in options[command], f"herocollector {command} has no option {flag}"


def test_reference_table_is_generated_from_the_argument_definitions() -> None:
    from herocollector.arguments import reference_table

    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("## Arguments", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert table == reference_table(), "regenerate it: python -m herocollector.arguments"


CLI_REFERENCE = DOCS / "cli.md"
COMMAND_HEADING = re.compile(r"^(#{2,3}) `herocollector ([a-z][a-z-]*(?: [a-z][a-z-]*)?)`\s*$", re.M)


def cli_commands() -> dict[str, argparse.ArgumentParser]:
    """Every command of the registry (``cli.main.COMMANDS``) and every sub-command (``remote status``), by name."""
    from herocollector.cli.main import COMMANDS, build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        found: dict[str, argparse.ArgumentParser] = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.update(action.choices)
        return found

    top = subcommands(build_parser())
    commands: dict[str, argparse.ArgumentParser] = {}
    for command in COMMANDS:
        commands[command.NAME] = top[command.NAME]
        for name, parser in subcommands(top[command.NAME]).items():
            commands[f"{command.NAME} {name}"] = parser
    return commands


def cli_sections() -> dict[str, str]:
    """The sections of docs/cli.md, by the command their heading names (``## `herocollector collect```)."""
    text = CLI_REFERENCE.read_text(encoding="utf-8")
    headings = list(COMMAND_HEADING.finditer(text))
    sections: dict[str, str] = {}
    for heading, following in zip(headings, [*headings[1:], None]):
        name = heading.group(2)
        assert name not in sections, f"docs/cli.md documents herocollector {name} twice"
        assert len(heading.group(1)) == 2 + name.count(" "), f"herocollector {name}: use {'#' * (2 + name.count(' '))}"
        end = following.start() if following else len(text)
        sections[name] = text[heading.end() : end].split("\n## ", 1)[0]
    return sections


def test_every_cli_command_has_its_section_in_docs_cli() -> None:
    commands, sections = set(cli_commands()), set(cli_sections())
    missing = sorted(commands - sections)
    assert not missing, f"docs/cli.md needs a section per command: add {[f'herocollector {m}' for m in missing]}"
    unknown = sorted(sections - commands)
    assert not unknown, f"docs/cli.md documents commands that do not exist: {unknown}"


def _mentioned(option: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_every_cli_option_is_documented_in_its_section_and_exists() -> None:
    commands, sections = cli_commands(), cli_sections()
    for name, parser in commands.items():
        # A sub-command's options may be described once, in its parent's section (every remote method's --realm).
        parent = name.split(" ", 1)[0] if " " in name else None
        text = sections.get(name, "") + (sections.get(parent, "") if parent else "")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert any(_mentioned(o, text) for o in action.option_strings), (
                f"docs/cli.md: herocollector {name}: {'/'.join(action.option_strings)} is not documented"
            )
        named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", sections.get(name, "")))
        children = [p for n, p in commands.items() if n.startswith(f"{name} ")]
        known = {o for p in [parser, *children] for a in p._actions for o in a.option_strings}
        assert named <= known, f"docs/cli.md: herocollector {name} has no option {sorted(named - known)}"


def _extra_rows(text: str, heading: str) -> list[str]:
    """The extras in the rows of the table headed ``| extra |`` in the section ``## heading``."""
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    table = re.search(r"^\| extra \|.*\n((?:\|.*\n)+)", section, re.M)
    assert table, f"## {heading} needs a table of the extras, headed '| extra |'"
    return re.findall(r"^\|\s*`herocollector\[([a-z0-9-]+)\]`\s*\|", table.group(1), re.M)


def test_every_extra_is_documented() -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    )
    extras.discard("test")  # the test tools, installed by the quick start
    for doc, where in ((DOCS / "operations.md", "docs/operations.md"), (README, "README.md")):
        rows = _extra_rows(doc.read_text(encoding="utf-8"), "Installing")
        assert len(rows) == len(set(rows)), f"{where}: an extra has two rows: {rows}"
        assert set(rows) == extras, f"{where} ## Installing: a row per extra {sorted(extras)}, found {sorted(rows)}"
