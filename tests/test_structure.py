"""The package's shape (issue 12): no import cycle (TYPE_CHECKING imports included); providers own
their configuration."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gosession_tornado"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path, name: str, modules: set[str]) -> set[str]:
    """Package modules *path* imports, anywhere in the file (under TYPE_CHECKING too)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            targets = [root] + [f"{root}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not (is_package and target.startswith(name + ".")):
                found.add(target)
    return found


def test_the_package_has_no_import_cycle() -> None:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: _imports(path, name, modules) for name, path in paths.items()}
    # __init__ modules re-export their package: leave them out of the cycle search
    graph = {n: {d for d in deps if paths[d].name != "__init__.py"} for n, deps in graph.items()
             if paths[n].name != "__init__.py"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    session_deps = graph["gosession_tornado.session"]
    assert session_deps.isdisjoint({"gosession_tornado.manager", "gosession_tornado.web"})


def test_providers_own_their_configuration() -> None:
    """The package's top level is the core; each provider family's parsing sits in its package."""
    top = {p.name for p in PACKAGE.glob("*.py")}
    for gone in ("redis_config.py", "dsn.py", "pg_dsn.py", "_configparse.py", "durations.py"):
        assert gone not in top, f"{gone} is provider plumbing: it belongs under providers/"
    assert "values.py" in top  # the value parsers every configuration shares
    providers = PACKAGE / "providers"
    assert sorted(p.name for p in providers.glob("*.py")) == [
        "__init__.py", "cookie.py", "file.py", "memcache.py", "memory.py",
    ]
    families = {
        "redis": {"__init__.py", "config.py", "provider.py", "cluster.py", "sentinel.py"},
        "sql": {"__init__.py", "base.py", "config.py", "mysql.py", "mysql_dsn.py", "postgresql.py",
                "postgresql_dsn.py"},
    }
    for family, files in families.items():
        assert {p.name for p in (providers / family).glob("*.py")} == files, family
    assert sorted(p.name for p in providers.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(
        families
    )


def test_the_registry_imports_every_builtin_from_its_place() -> None:
    from gosession_tornado.registry import BUILTINS

    for name, (module, _cls, _extra) in BUILTINS.items():
        path = PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")
        assert path.is_file(), f"{name}: {module} is not a module of the package"
        assert not any(part.startswith("_") for part in module.split(".")), f"{name}: {module} is private"


def test_config_parsing_imports_no_client() -> None:
    """The families' config modules (and their packages) import no Redis client or SQL driver."""
    drivers = ("redis", "aiomysql", "pymysql", "asyncpg", "emcache")
    for name in ("providers/redis/__init__.py", "providers/redis/config.py", "providers/sql/__init__.py",
                 "providers/sql/config.py", "providers/sql/mysql_dsn.py", "providers/sql/postgresql_dsn.py",
                 "values.py"):
        path = PACKAGE / name
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not set(roots) & set(drivers), f"{name} imports a client: {roots}"
