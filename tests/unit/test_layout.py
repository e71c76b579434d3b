"""The test tree itself: pytest (rootdir-relative imports, no __init__ per folder) cannot
collect two test files with the same name in different folders."""

import collections
import pathlib


def test_no_two_test_files_share_a_name():
    tests = pathlib.Path(__file__).resolve().parents[1]
    names = collections.Counter(p.name for p in tests.rglob("test_*.py"))
    assert [n for n, count in names.items() if count > 1] == []
