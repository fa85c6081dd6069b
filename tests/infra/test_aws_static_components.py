"""Static checks over every ComponentResource in components/ (both clouds): the last statement
of __init__ registers the outputs, and every resource it creates is parented to it. The
modules a component hands part of its work to (each cloud's upload API) create resources
only in functions whose first parameter is the component, and parent every one to it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from components.packaging import PROJECT_ROOT

COMPONENT_FILES = [
    PROJECT_ROOT / "components" / "aws" / "pipeline.py",
    PROJECT_ROOT / "components" / "gcp" / "pipeline.py",
]
# Modules of resources a component creates through them: `f(component, name, args, ...)`.
PART_FILES = [
    PROJECT_ROOT / "components" / "aws" / "api.py",
    PROJECT_ROOT / "components" / "gcp" / "api.py",
    PROJECT_ROOT / "components" / "aws" / "functions.py",
    PROJECT_ROOT / "components" / "gcp" / "functions.py",
]
PART_PARENT = "component"


def component_classes(tree: ast.Module) -> list[ast.ClassDef]:
    def is_component(base: ast.expr) -> bool:
        return (isinstance(base, ast.Attribute) and base.attr == "ComponentResource") or (
            isinstance(base, ast.Name) and base.id == "ComponentResource"
        )

    return [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and any(is_component(base) for base in node.bases)
    ]


def provider_aliases(tree: ast.Module) -> set[str]:
    """Names bound to pulumi_* provider modules: `import pulumi_aws as aws` -> 'aws'."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pulumi_"):
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pulumi_"):
            aliases.update(alias.asname or alias.name for alias in node.names)
    return aliases


def root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def is_resource_call(call: ast.Call, aliases: set[str]) -> bool:
    """`aws.s3.Bucket(...)`: a capitalised class from a provider module (not an *Args type)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return (
        root_name(func) in aliases
        and name[:1].isupper()
        and not name.endswith(("Args", "ArgsDict"))
    )


def is_parented_options(node: ast.expr, parented_names: set[str], parent: str = "self") -> bool:
    if isinstance(node, ast.Name):
        return node.id in parented_names
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "ResourceOptions":
        return any(
            kw.arg == "parent" and isinstance(kw.value, ast.Name) and kw.value.id == parent
            for kw in node.keywords
        )
    if isinstance(func, ast.Attribute) and func.attr == "merge":  # opts.merge(parented)
        candidates = [func.value, *node.args]
        return any(is_parented_options(arg, parented_names, parent) for arg in candidates)
    return False


def unparented_resources(
    method: ast.FunctionDef, aliases: set[str], parent: str = "self"
) -> list[str]:
    parented_names = set()
    for node in ast.walk(method):  # `child = pulumi.ResourceOptions(parent=self)`
        if isinstance(node, ast.Assign) and is_parented_options(node.value, parented_names, parent):
            parented_names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    problems = []
    for node in ast.walk(method):
        if isinstance(node, ast.Call) and is_resource_call(node, aliases):
            opts = next((kw.value for kw in node.keywords if kw.arg == "opts"), None)
            if opts is None or not is_parented_options(opts, parented_names, parent):
                problems.append(f"{ast.unparse(node.func)} at line {node.lineno}")
    return problems


def resources_in_lambdas(tree: ast.Module, aliases: set[str]) -> list[str]:
    """Resource calls inside a lambda: what `.apply(lambda ...)` would create."""
    return [
        f"{ast.unparse(node.func)} at line {node.lineno}"
        for function in ast.walk(tree)
        if isinstance(function, ast.Lambda)
        for node in ast.walk(function)
        if isinstance(node, ast.Call) and is_resource_call(node, aliases)
    ]


@pytest.fixture(params=COMPONENT_FILES, ids=lambda path: path.parent.name)
def component_tree(request) -> ast.Module:
    path: Path = request.param
    assert path.exists(), f"{path.relative_to(PROJECT_ROOT)} is missing"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_init_starts_with_super_and_ends_with_register_outputs(component_tree):
    classes = component_classes(component_tree)
    assert classes, "no ComponentResource class found"
    for cls in classes:
        init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
        first, last = init.body[0], init.body[-1]
        assert "super().__init__(" in ast.unparse(first), f"{cls.name}: super().__init__ first"
        assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call), cls.name
        assert ast.unparse(last.value.func) == "self.register_outputs", (
            f"{cls.name}.__init__ must end with self.register_outputs(...), not {ast.unparse(last)}"
        )


def test_every_resource_is_parented_to_the_component(component_tree):
    aliases = provider_aliases(component_tree)
    assert aliases, "no pulumi_* provider import found"
    for cls in component_classes(component_tree):
        methods = [n for n in cls.body if isinstance(n, ast.FunctionDef)]
        problems = [p for method in methods for p in unparented_resources(method, aliases)]
        assert problems == [], f"{cls.name}: resources without parent=self: {problems}"


def test_no_resource_is_created_outside_a_component_method(component_tree):
    aliases = provider_aliases(component_tree)
    inside = {id(node) for cls in component_classes(component_tree) for node in ast.walk(cls)}
    stray = [
        ast.unparse(node.func)
        for node in ast.walk(component_tree)
        if isinstance(node, ast.Call) and is_resource_call(node, aliases) and id(node) not in inside
    ]
    assert stray == [], f"resources created outside the component: {stray}"


@pytest.fixture(params=PART_FILES, ids=lambda path: f"{path.parent.name}-{path.stem}")
def part_tree(request) -> ast.Module:
    path: Path = request.param
    assert path.exists(), f"{path.relative_to(PROJECT_ROOT)} is missing"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_parts_create_resources_only_as_children_of_the_component_they_are_given(part_tree):
    aliases = provider_aliases(part_tree)
    assert aliases, "no pulumi_* provider import found"
    creators = [
        node
        for node in part_tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(n, ast.Call) and is_resource_call(n, aliases) for n in ast.walk(node))
    ]
    assert creators, "no function creates a resource: the check would be vacuous"
    for function in creators:
        first = function.args.args[0].arg if function.args.args else None
        assert first == PART_PARENT, f"{function.name}: the component comes first"
        problems = unparented_resources(function, aliases, PART_PARENT)
        assert problems == [], (
            f"{function.name}: resources without parent={PART_PARENT}: {problems}"
        )
    inside = {id(node) for function in creators for node in ast.walk(function)}
    stray = [
        ast.unparse(node.func)
        for node in ast.walk(part_tree)
        if isinstance(node, ast.Call) and is_resource_call(node, aliases) and id(node) not in inside
    ]
    assert stray == [], f"resources created outside a function given the component: {stray}"


@pytest.mark.parametrize(
    "path", COMPONENT_FILES + PART_FILES, ids=lambda path: f"{path.parent.name}-{path.stem}"
)
def test_no_resource_is_created_inside_a_lambda(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert resources_in_lambdas(tree, provider_aliases(tree)) == []


def test_the_checks_catch_a_missing_parent():
    source = (
        "import pulumi, pulumi_aws as aws\n"
        "class C(pulumi.ComponentResource):\n"
        "    def __init__(self, name, args, opts=None):\n"
        "        super().__init__('t:index:C', name, {}, opts)\n"
        "        child = pulumi.ResourceOptions(parent=self)\n"
        "        aws.s3.Bucket('ok', opts=child)\n"
        "        aws.s3.Bucket('bad')\n"
        "        aws.sqs.Queue('bad2', opts=pulumi.ResourceOptions(depends_on=[]))\n"
        "        self.register_outputs({})\n"
    )
    tree = ast.parse(source)
    (cls,) = component_classes(tree)
    init = cls.body[0]
    assert unparented_resources(init, provider_aliases(tree)) == [
        "aws.s3.Bucket at line 7",
        "aws.sqs.Queue at line 8",
    ]
