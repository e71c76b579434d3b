"""The bench runner of tests/run: declarations and the last-line check."""

import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("run_benches", REPO / "tests" / "support" / "run_benches.py")
rb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rb)


def test_every_bench_declares_its_ci_size_and_last_line():
    benches = sorted((REPO / "bench").glob("*.py"))
    assert benches
    for path in benches:
        decl, why = rb.declarations(path)
        assert decl is not None, f"{path.name}: {why}"
        args, form = decl
        assert args and form[0] == path.stem and len(form) > 1


def test_declarations_refuse_a_bench_without_them(tmp_path):
    path = tmp_path / "foo.py"
    path.write_text("print('foo a=1')\n")
    assert rb.declarations(path)[0] is None
    path.write_text("# ci-args: --runs 1\n# last-line: bar a\n")
    decl, why = rb.declarations(path)
    assert decl is None and "foo" in why
    path.write_text("# ci-args: --runs 1 --size 'a b'\n# last-line: foo a b\n")
    assert rb.declarations(path) == ((["--runs", "1", "--size", "a b"], ["foo", "a", "b"]), None)
    path.write_text("# ci-args: --runs 1\n# last-line: foo a=<> b=<N>\n")
    assert rb.declarations(path) == ((["--runs", "1"], ["foo", "a", "b"]), None)


@pytest.mark.parametrize("output, problem", [
    ("x\nfoo a=1 b=2.5 c=x\n\n", None),
    ("foo a=1 b=2 extra=3", None),
    ("", "printed nothing"),
    ("foo a=1", "lacks ['b']"),
    ("bar a=1 b=2", "does not start with 'foo'"),
    ("foo a=1 b=2 oops", "not key=value"),
    ("foo a=1 b=2\nTraceback (most recent call last):", "does not start"),
])
def test_last_line_form(output, problem):
    got = rb.check_last_line(output, ["foo", "a", "b"])
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got
