"""scripts/mypyc, the optional compiled proxy: the tests run pure Python, and the script's rules
for what it compiles and what it excludes (and why) hold without running a compiler.

A real build takes minutes (``scripts/mypyc``; ``benchmarks.proxy --mypyc`` runs it): these
check the parts that decide what a build contains.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import engine.connection
import proxy.exchange
import proxy.headers
import proxy.upstream

REPO = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("scripts_mypyc", str(REPO / "scripts" / "mypyc"))
    spec = importlib.util.spec_from_loader("scripts_mypyc", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scripts_mypyc"] = module  # dataclasses and the like look their module up
    loader.exec_module(module)
    return module


mypyc = _script()


def test_the_suite_runs_the_python_source_never_a_compiled_module() -> None:
    for module in (engine.connection, proxy.exchange, proxy.headers, proxy.upstream):
        assert module.__file__ is not None and module.__file__.endswith(".py"), module.__file__
    leftovers = [p for pkg in ("engine", "proxy", "asgilab") for p in (REPO / pkg).rglob("*.so")]
    assert leftovers == [], "compiled modules in the working tree would shadow the sources"


def test_it_refuses_to_compile_the_working_tree_in_place(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        mypyc.main(["--in-place", str(REPO)])
    assert exc.value.code == 2 and "refusing to compile the working tree" in capsys.readouterr().err


def test_the_default_list_is_the_per_request_modules_as_they_are_now(tmp_path: Path) -> None:
    names = ["__init__", "__main__", "server", "attempt", "headers"]
    for rel in [f"proxy/{n}.py" for n in names] + [
        "engine/__init__.py",
        "engine/connection.py",
        "engine/options.py",
    ]:
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("")
    # A new module (attempt.py) is picked up; markers, the entry point and start-up code are not.
    assert mypyc.default_modules(tmp_path) == ["engine/connection.py", "proxy/attempt.py", "proxy/headers.py"]


def test_type_errors_are_attributed_to_their_module() -> None:
    output = (
        "proxy/discovery.py:40: error: Inheriting from most builtin types is unimplemented\n"
        "proxy/discovery.py:90: error: something else\n"
        'proxy/downstream.py:112:5: error: Type of "site" is incompatible\n'
        "engine/other.py:1: error: not a candidate\n"
    )
    found = mypyc.failing_modules(output, ["proxy/discovery.py", "proxy/downstream.py", "proxy/pool.py"])
    assert found == {
        "proxy/discovery.py": "Inheriting from most builtin types is unimplemented",
        "proxy/downstream.py": 'Type of "site" is incompatible',
    }


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_a_class_staying_python_keeps_its_compiled_base_python_too(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "engine/connection.py": "class HTTPConnection:\n    pass\n",
            "engine/flow.py": "class Flow:\n    pass\n",
            "proxy/downstream.py": "from engine.connection import HTTPConnection\n\n"
            "class DownstreamProtocol(HTTPConnection):\n    pass\n",
            "asgilab/cycle.py": "import engine.flow\n\nclass F(engine.flow.Flow):\n    pass\n",
        },
    )
    compiled = ["engine/connection.py", "engine/flow.py"]
    found = mypyc.subclassed_by_python(root, compiled)
    assert set(found) == {"engine/connection.py", "engine/flow.py"}
    assert "proxy/downstream.py (stays Python) subclasses its HTTPConnection" in found["engine/connection.py"]
    # Compiled together, the subclass is no reason to exclude anything.
    assert mypyc.subclassed_by_python(root, [*compiled, "proxy/downstream.py", "asgilab/cycle.py"]) == {}


def test_a_run_time_failure_is_blamed_on_the_innermost_compiled_frame(tmp_path: Path) -> None:
    err = (
        "Traceback (most recent call last):\n"
        '  File "proxy/server.py", line 92, in start\n'
        f'  File "{tmp_path}/proxy/upstream.py", line 160, in port\n'
        "TypeError: tuple object expected; got list\n"
    )
    assert mypyc.blame(tmp_path, err, ["proxy/upstream.py"], "why") == {"proxy/upstream.py": "why"}
    assert mypyc.blame(tmp_path, "no traceback at all", ["proxy/upstream.py"], "why") == {"*": "why"}


def test_without_a_compiler_nothing_is_compiled_and_it_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert mypyc.toolchain_missing() == "no C compiler (no-such-compiler-here not found)"
    assert mypyc.main(["--out", str(tmp_path / "out")]) == 3
    assert "nothing compiled, the tree stays pure Python: no C compiler" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
