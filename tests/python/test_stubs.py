"""The shipped type stubs parse and name every public attribute."""
import ast
import inspect
from pathlib import Path

import towerrec


def stub_tree():
    path = Path(towerrec.__file__).with_name("__init__.pyi")
    assert path.is_file(), "type stubs not installed"
    assert Path(towerrec.__file__).with_name("py.typed").is_file()
    return ast.parse(path.read_text())


def test_stubs_cover_the_api():
    tree = stub_tree()
    top = set()
    methods = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            top.add(node.target.id)
        if isinstance(node, ast.ClassDef) and node.name == "TwoTower":
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    assert set(towerrec.__all__) <= top
    public = {n for n, _ in inspect.getmembers(towerrec.TwoTower) if not n.startswith("_")}
    assert public <= methods | {"__init__"}
