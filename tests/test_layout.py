"""The suite mirrors the package: the tests of `fakd/<package>/<module>.py` are found under
`tests/unit/<package>/` (the top-level modules' under `tests/unit/`), in `test_<module>.py` or in a test module
there that names `fakd.<package>.<module>`. End-to-end tests (Ray, drivers, services) live in `tests/integration/`;
a module that only a study exercises (the study runner, the cluster, Slurm) is named by one of them."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, UNIT, INTEGRATION = ROOT / "fakd", ROOT / "tests" / "unit", ROOT / "tests" / "integration"


def modules_with_logic() -> dict[str, set[str]]:
    """Every module of the package that defines a function (a module of constants or re-exports has no logic), by
    dotted name, with the names it defines."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in ast.walk(tree)):
            dotted = ".".join(("fakd", *path.relative_to(PACKAGE).with_suffix("").parts))
            found[dotted] = {node.name for node in tree.body
                             if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)}
    return found


def named_in(test: Path) -> set[tuple[str, str]]:
    """What a test module imports from the package, as (module, name) pairs (`import fakd.x.y`: (fakd.x.y, ""))."""
    pairs = set()
    for node in ast.walk(ast.parse(test.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fakd"):
            pairs |= {(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            pairs |= {(alias.name, "") for alias in node.names if alias.name.startswith("fakd")}
    return pairs


def names(imports: set[tuple[str, str]], dotted: str, defined: set[str]) -> bool:
    """Whether imports name the module `dotted`: the module itself (`from fakd.study import signals`, `from
    fakd.study.signals import …`), or something it defines, through its package (`from fakd.study import sweep`)."""
    package, _, stem = dotted.rpartition(".")
    for module, name in imports:
        if module == dotted or (module == package and name == stem):
            return True
        if dotted.startswith(module + ".") and name in defined:
            return True
    return False


def test_every_module_with_logic_has_tests_where_its_path_says():
    imports = {test: named_in(test) for test in (ROOT / "tests").rglob("test_*.py")}
    missing = []
    for dotted, defined in modules_with_logic().items():
        parts = dotted.split(".")[1:]
        directory = UNIT / parts[0] if len(parts) > 1 else UNIT  # zoo/ is under models/
        candidates = [*directory.glob("test_*.py"), *INTEGRATION.glob("test_*.py")]
        if (directory / f"test_{parts[-1]}.py").is_file() or any(
                names(imports[test], dotted, defined) for test in candidates):
            continue
        missing.append(f"{dotted}: no {directory.relative_to(ROOT)}/test_{parts[-1]}.py, and no test module there "
                       "or in tests/integration imports it or what it defines")
    assert not missing, "\n".join(missing)


def test_test_module_names_are_unique():
    """pytest imports test modules by their file name (every test directory is on sys.path): two alike would clash."""
    stems = [path.stem for path in (ROOT / "tests").rglob("test_*.py")]
    assert len(stems) == len(set(stems)), sorted(stem for stem in stems if stems.count(stem) > 1)
