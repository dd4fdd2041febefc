"""Output path templates: sandboxed Jinja2, confined to ``output_root``, one label per path segment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from herocollector.errors import CollectorError, ConfigError, LabelPathError, OutputError
from herocollector.output.paths import PathTemplate, is_within

# ----------------------------------------------------------------------------------------
# PathTemplate
# ----------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_output_error_is_a_collector_error() -> None:
    assert issubclass(OutputError, CollectorError)


def test_renders_inside_output_root(root: Path) -> None:
    template = PathTemplate("{{ output_root }}/{{ experiment }}/{{ measure }}.arrow", root)
    path = template.render({"experiment": "exp-1", "measure": "stock"})
    assert path == root / "exp-1" / "stock.arrow"
    assert path.is_absolute()
    assert not path.exists()  # rendering creates nothing


def test_relative_result_goes_under_output_root(root: Path) -> None:
    template = PathTemplate("{{ experiment }}/{{ measure }}.arrow", root)
    assert template.render({"experiment": "e", "measure": "m"}) == root / "e" / "m.arrow"


def test_output_root_is_made_absolute(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root.parent)
    template = PathTemplate("x/{{ m }}.arrow", "out")
    assert template.output_root == root
    assert template.render({"m": "a"}) == root / "x" / "a.arrow"


def test_dot_segments_inside_root_are_normalised(root: Path) -> None:
    template = PathTemplate("{{ output_root }}/a/./b/../{{ m }}.arrow", root)
    assert template.render({"m": "c"}) == root / "a" / "c.arrow"


def test_surrounding_whitespace_is_stripped(root: Path) -> None:
    template = PathTemplate("  {{ m }}.arrow\n", root)
    assert template.render({"m": "a"}) == root / "a.arrow"


@pytest.mark.parametrize(
    "source, context",
    [
        ("{{ output_root }}/../escaped.arrow", {}),
        ("../x.arrow", {}),
        ("a/../../x.arrow", {}),
    ],
    ids=["template-dotdot", "relative-dotdot", "nested-dotdot"],
)
def test_dotdot_escape_is_refused(root: Path, source: str, context: dict[str, Any]) -> None:
    template = PathTemplate(source, root)
    with pytest.raises(OutputError, match="outside output_root"):
        template.render(context)


@pytest.mark.parametrize("elsewhere", ["/etc/x.arrow", "/tmp/x.arrow", "/"])
def test_absolute_path_elsewhere_is_refused(root: Path, elsewhere: str) -> None:
    template = PathTemplate("{{ target }}", root)
    with pytest.raises(LabelPathError, match="path separator"):
        template.render({"target": elsewhere})
    with pytest.raises(OutputError, match="outside output_root"):
        template.render({}, trusted={"target": elsewhere})  # trusted, yet still confined


def test_sibling_with_common_prefix_is_refused(root: Path) -> None:
    # "/.../out-evil" starts with the string "/.../out" but is not inside it.
    template = PathTemplate("{{ output_root }}-evil/x.arrow", root)
    with pytest.raises(OutputError, match="outside output_root"):
        template.render({})


def test_output_root_itself_is_refused(root: Path) -> None:
    template = PathTemplate("{{ output_root }}", root)
    with pytest.raises(OutputError):
        template.render({})


def test_symlinked_directory_pointing_outside_is_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    template = PathTemplate("{{ output_root }}/link/{{ m }}.arrow", root)
    with pytest.raises(OutputError, match="outside output_root"):
        template.render({"m": "stock"})
    assert list(outside.iterdir()) == []


def test_symlinked_file_pointing_outside_is_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "victim.arrow"
    outside.write_bytes(b"keep")
    (root / "x.arrow").symlink_to(outside)
    template = PathTemplate("x.arrow", root)
    with pytest.raises(OutputError, match="outside output_root"):
        template.render({})


def test_symlink_staying_inside_root_is_allowed(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    template = PathTemplate("alias/{{ m }}.arrow", root)
    assert template.render({"m": "a"}) == root / "alias" / "a.arrow"


def test_symlinked_output_root_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real-out"
    real.mkdir()
    (tmp_path / "out-link").symlink_to(real, target_is_directory=True)
    template = PathTemplate("{{ m }}.arrow", tmp_path / "out-link")
    assert template.render({"m": "a"}) == tmp_path / "out-link" / "a.arrow"


@pytest.mark.parametrize("value", ["   ", "\n\t"], ids=["spaces", "whitespace"])
def test_empty_result_is_refused(root: Path, value: str) -> None:
    template = PathTemplate("{{ m }}", root)
    with pytest.raises(OutputError, match="empty or invalid"):
        template.render({"m": value})


@pytest.mark.parametrize("value", ["a\x00b", "\x00", "../\x00"])
def test_nul_is_refused(root: Path, value: str) -> None:
    template = PathTemplate("{{ output_root }}/{{ m }}.arrow", root)
    with pytest.raises(LabelPathError):
        template.render({"m": value})


@pytest.mark.parametrize(
    "value, problem",
    [
        ("../run-0002/stock", "path separator"),
        ("a/b", "path separator"),
        ("..", "'..'"),
        (".", "'.'"),
        ("", "empty"),
        ("a\\b", "path separator"),
    ],
)
def test_a_label_value_stays_in_its_own_segment(root: Path, value: str, problem: str) -> None:
    template = PathTemplate("{{ output_root }}/{{ run }}/{{ measure }}.arrow", root)
    with pytest.raises(LabelPathError, match=problem) as info:
        template.render({"run": "run-0001", "measure": value})
    assert repr(value) in str(info.value) and "subpath" in str(info.value)
    assert not info.value.retryable


def test_subpath_filter_lets_a_value_span_folders_on_purpose(root: Path) -> None:
    template = PathTemplate("{{ group | subpath }}/{{ measure }}.arrow", root)
    assert template.render({"group": "site-a/line-2", "measure": "m"}) == root / "site-a" / "line-2" / "m.arrow"
    for bad in ("a/../b", "../x", "a//b", "./a", "a/"):
        with pytest.raises(LabelPathError, match="subpath"):
            template.render({"group": bad, "measure": "m"})


def test_filtered_label_values_are_checked_too(root: Path) -> None:
    template = PathTemplate("{{ measure | lower }}/{{ measure ~ '/x' }}.arrow", root)
    with pytest.raises(LabelPathError):
        template.render({"measure": "M"})


def test_trusted_values_may_hold_separators(root: Path) -> None:
    template = PathTemplate("{{ base }}/{{ m }}.arrow", root)
    assert template.render({"m": "a"}, trusted={"base": str(root / "x" / "y")}) == root / "x" / "y" / "a.arrow"


def test_a_long_valid_name_renders_and_a_too_long_one_is_refused(root: Path) -> None:
    template = PathTemplate("{{ m }}", root)
    name = "n" * 245 + ".arrow"  # 251 bytes, valid
    assert template.render({"m": name}).name == name
    with pytest.raises(OutputError, match="256 bytes"):
        template.render({"m": "n" * 250 + ".arrow"})


def test_undefined_variable_is_an_error_not_an_empty_segment(root: Path) -> None:
    template = PathTemplate("{{ output_root }}/{{ experiment }}/{{ measure }}.arrow", root)
    with pytest.raises(OutputError, match="experiment"):
        template.render({"measure": "stock"})


@pytest.mark.parametrize(
    "source",
    [
        "{{ missing.attribute }}/x.arrow",
        "{{ m.nope }}/x.arrow",
        "{{ m['nope'] }}/x.arrow",
        "{{ missing | upper }}.arrow",
    ],
)
def test_undefined_lookups_are_errors(root: Path, source: str) -> None:
    with pytest.raises(OutputError):
        PathTemplate(source, root).render({"m": "value"})


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ m.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ (m.format)(m) }}{{ ''.__class__ }}",
    ],
)
def test_sandbox_blocks_unsafe_attribute_access(root: Path, source: str) -> None:
    template = PathTemplate(source, root)
    with pytest.raises(OutputError, match="unsafe"):
        template.render({"m": "x"})


def test_sandbox_error_surfaces_as_output_error_naming_the_template(root: Path) -> None:
    source = "{{ ''.__class__.__mro__ }}"
    with pytest.raises(OutputError) as info:
        PathTemplate(source, root).render({})
    assert source in str(info.value)
    assert "access to attribute '__class__'" in str(info.value)


def test_filters_and_expressions_still_work(root: Path) -> None:
    template = PathTemplate("{{ experiment | lower }}/run-{{ '%04d' % run }}/{{ measure ~ '.arrow' }}", root)
    assert (
        template.render({"experiment": "EXP", "run": 7, "measure": "stock"})
        == root / "exp" / "run-0007" / "stock.arrow"
    )


@pytest.mark.parametrize("source", ["{{ a", "{% if %}", "{{ a }}{% endfor %}"])
def test_invalid_template_is_refused_at_construction(root: Path, source: str) -> None:
    with pytest.raises(ConfigError, match="invalid save_template"):
        PathTemplate(source, root)


def test_is_within(tmp_path: Path, root: Path) -> None:
    assert is_within(root / "a" / "b", root)
    assert is_within(root, root)
    assert not is_within(tmp_path / "other", root)
    assert not is_within(root / ".." / "x", root)


def test_is_within_resolves_symlinks_and_refuses_a_nul(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (outside / "back").symlink_to(root, target_is_directory=True)
    assert not is_within(root / "escape" / "file", root)
    assert is_within(outside / "back" / "file", root)
    assert not is_within(Path(f"{root}/a\x00b"), root)


def test_lone_surrogate_in_a_label_is_refused_as_not_unicode(root: Path) -> None:
    template = PathTemplate("{{ output_root }}/{{ m }}.arrow", root)
    with pytest.raises(LabelPathError, match="not valid Unicode"):
        template.render({"m": "a\ud800b"})


def test_lone_surrogate_in_a_trusted_value_is_an_invalid_path(root: Path) -> None:
    template = PathTemplate("{{ output_root }}/{{ site }}/x.arrow", root)
    with pytest.raises(OutputError, match="invalid path"):
        template.render({}, trusted={"site": "lab\udcff"})


@pytest.mark.parametrize("value", [".hidden", "_data", "_", ".x.y"])
def test_a_label_that_dataset_readers_would_skip_is_refused(root: Path, value: str) -> None:
    # pyarrow.dataset, polars and Spark leave out files and folders whose names start with "." or "_".
    template = PathTemplate("{{ output_root }}/{{ run }}/{{ measure }}.arrow", root)
    with pytest.raises(LabelPathError, match="dataset readers skip") as info:
        template.render({"run": "run-0001", "measure": value})
    assert not info.value.retryable
    with pytest.raises(LabelPathError, match="dataset readers skip"):
        template.render({"run": value, "measure": "stock"})
    opted_in = PathTemplate("{{ output_root }}/{{ run | subpath }}/{{ measure }}.arrow", root)
    assert opted_in.render({"run": value, "measure": "stock"}) == root / value / "stock.arrow"
