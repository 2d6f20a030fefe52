"""Every API name that README.md and docs/*.md state exists in the code (issue 21, item 7).

The docs are parsed for what they say about the package's API, and each statement is checked
against the code as it is when the test runs:

- a backticked dotted name ```contextrast.x.y``` (and ```functional.f``` / ```contrast.C```,
  the short form docs/method.md uses): the longest prefix that imports as a module, then
  attributes for the rest. A name that denotes a module must import as one under that name
  (``import contextrast.metrics`` fails when ``metrics`` is only an attribute), and so must a
  name the text calls a module or package, runs with ``-m`` or imports from;
- ```Class.attribute``` for a class the package defines;
- bare names presented as a module's API: "```A```, ```B``` in ```contextrast.x```" within a
  sentence, and the members listed after a "```contextrast.x``` —" lead (and in the first
  column of the table that follows it);
- import statements: those in fenced ``python`` blocks (only the imports, not the rest of the
  block) and in backticks are executed.

All failures are reported at once, each with file:line.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import keyword
import pkgutil
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "contextrast"
# Short forms the docs use for modules of the package (docs/method.md: `functional.layer_sums`;
# docs/datasets.md: `metadata.generated_palette`). Only these: the other subpackages' names
# double as config sections in the docs (`data.root`, `model.name`), which are no module path.
RELATIVE = {
    "functional": f"{PACKAGE}.functional",
    "contrast": f"{PACKAGE}.contrast",
    "metadata": f"{PACKAGE}.data.metadata",
}
# A last component that makes a dotted span a file name (`functional.py`, `contextrast.yaml`).
FILE_SUFFIXES = set("py yaml yml json jsonl md txt png pt pt2 pth onnx zip".split())

IDENT = r"[A-Za-z_]\w*"
SPAN = re.compile(r"`([^`]+)`")
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
PARAGRAPH = re.compile(r"(?:[ \t]*\S[^\n]*(?:\n|$))+")
IMPORT_STATEMENT = re.compile(rf"(?:from\s+[\w.]+\s+import\s+.+|import\s+{IDENT}(?:\.\w+)*.*)")
RUN_MODULE = re.compile(r"(?<![\w-])-m\s+([\w.]+)")
MEMBER = re.compile(rf"({IDENT})(?:\(.*\))?", re.S)
CLASS_ATTRIBUTE = re.compile(rf"([A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*)\.({IDENT})(?:\(.*\))?", re.S)


@dataclass(frozen=True)
class Claim:
    """One statement of the docs about the API."""

    where: str  # file:line
    name: str  # a dotted name, or the text of an import statement
    kind: str  # "name", "module", "member", "listed", "class", "import"

    def __str__(self) -> str:
        return f"{self.where}: `{self.name}`"


def api_word(name: str) -> bool:
    """A snake_case or CamelCase identifier, not a prose word (`lovasz`, `None`, `e.g`)."""
    if keyword.iskeyword(name) or hasattr(builtins, name) or name.startswith("_") or len(name) < 2:
        return False
    return "_" in name or any(c.isupper() for c in name)


def dotted(text: str, package: str = PACKAGE, relative: dict[str, str] | None = None) -> str | None:
    """The absolute dotted API name a span starts with, or None."""
    relative = relative or {}
    heads = "|".join(re.escape(h) for h in (package, *relative))
    match = re.match(rf"(?:{heads})(?:\.{IDENT})+(?![\w/.-])", text)
    if not match or match.group(0).rsplit(".", 1)[1] in FILE_SUFFIXES:
        return None
    head, rest = match.group(0).split(".", 1)
    return f"{relative.get(head, head)}.{rest}"


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def blank_fences(text: str) -> tuple[str, list[tuple[str, int, str]]]:
    """The text with fenced blocks blanked (offsets kept), and the blocks (lang, line, code)."""
    blocks = []

    def blank(match: re.Match) -> str:
        blocks.append((match.group(2).lower(), line_of(text, match.start(3)), match.group(3)))
        return re.sub(r"[^\n]", " ", match.group(0))

    return FENCE.sub(blank, text), blocks


def import_statements(code: str) -> list[tuple[int, str]]:
    """(line within the block, source) of every import statement of a code block."""
    try:
        tree = ast.parse(textwrap.dedent(code))
    except SyntaxError:  # a fragment: take the single-line imports
        found = [(i, line.strip()) for i, line in enumerate(code.splitlines())]
        return [(i, s) for i, s in found if IMPORT_STATEMENT.fullmatch(s) and _compiles(s)]
    return [
        (node.lineno - 1, ast.unparse(node))
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]


def _compiles(source: str) -> bool:
    try:
        compile(source, "<doc>", "exec")
    except SyntaxError:
        return False
    return True


def bound_names(blocks: list[tuple[str, int, str]]) -> set[str]:
    """Names the file's Python examples assign: in that file `contrast.terms` is a method call
    on the example's variable, not a name in the `contextrast.contrast` module."""
    names = set()
    for lang, _, code in blocks:
        if lang in ("python", "py"):
            names.update(re.findall(rf"^\s*({IDENT})\s*=(?!=)", code, re.M))
            names.update(re.findall(rf"\bas\s+({IDENT})", code))
    return names


def parse(text: str, path: str = "<text>", package: str = PACKAGE) -> list[Claim]:
    """Every API statement of one Markdown text."""
    prose, blocks = blank_fences(text)
    bound = bound_names(blocks)
    relative = {k: v for k, v in RELATIVE.items() if k not in bound} if package == PACKAGE else {}
    claims: list[Claim] = []

    def add(offset_or_line: int, name: str, kind: str, *, is_line: bool = False) -> None:
        line = offset_or_line if is_line else line_of(text, offset_or_line)
        claims.append(Claim(f"{path}:{line}", name, kind))

    # Import statements in fenced Python blocks, executed one by one.
    for lang, first, code in blocks:
        if lang in ("python", "py"):
            for i, statement in import_statements(code):
                add(first + i, statement, "import", is_line=True)
    # `python -m package.x`, in prose or in shell blocks: a module.
    for match in RUN_MODULE.finditer(text):
        if match.group(1).split(".")[0] == package:
            add(match.start(1), match.group(1), "module")

    paragraphs = [(m.start(), m.group(0)) for m in PARAGRAPH.finditer(prose)]
    for index, (base, para) in enumerate(paragraphs):
        spans = [(m.start(), m.end(), " ".join(m.group(1).split())) for m in SPAN.finditer(para)]
        # Span contents masked, so sentence ends and words are found in the prose only.
        masked = SPAN.sub(lambda m: "`" + "x" * (len(m.group(0)) - 2) + "`", para)
        in_start = 0  # where the bare names of the next "in `package.x`" start
        for k, (start, end, content) in enumerate(spans):
            where = base + start
            if IMPORT_STATEMENT.fullmatch(content) and content.split()[1].startswith(package):
                add(where, content, "import")
                continue
            name = dotted(content, package, relative)
            if name:
                before, after = masked[max(0, start - 12) : start], masked[end : end + 12]
                called_module = re.search(r"\b(module|package)\s*$", before) or re.match(
                    r"\s*(module|package)\b", after
                )
                add(where, name, "module" if called_module else "name")
                # "`A`, `B` in `package.x`": the bare names before it in its sentence.
                if re.search(r"\bin\s+$", masked[:start]) and name == content:
                    sentence = [m.end() for m in re.finditer(r"[.!?](?=\s)", masked[:start])]
                    first = max([in_start, *sentence])
                    for s, _, member in spans[:k]:
                        ident = MEMBER.fullmatch(member)
                        if s >= first and ident and api_word(ident.group(1)):
                            add(base + s, f"{name}.{ident.group(1)}", "member")
                    in_start = end
                # "`package.x` — `a`, `b` ...": a module's listing, and the table after it.
                lead = re.match(r"\s*(?:\([^()]*\)\s*)?[—–]\s", masked[end:])
                if k == 0 and lead and not para[:start].strip():
                    members = [(base + s, m) for s, _, m in spans[1:]]
                    if index + 1 < len(paragraphs) and paragraphs[index + 1][1].startswith("|"):
                        members += table_first_column(*paragraphs[index + 1])
                    for offset, member in members:
                        ident = MEMBER.fullmatch(member)
                        if ident and api_word(ident.group(1)):
                            add(offset, f"{name}.{ident.group(1)}", "listed")
                continue
            match = CLASS_ATTRIBUTE.fullmatch(content)
            if match and package == PACKAGE and match.group(2) not in FILE_SUFFIXES:
                add(where, f"{match.group(1)}.{match.group(2)}", "class")
    return claims


def table_first_column(base: int, table: str) -> list[tuple[int, str]]:
    """(offset, span) of the spans in the first column of a Markdown table's body rows."""
    found = []
    offset = base
    for row_number, row in enumerate(table.splitlines(keepends=True)):
        cells = row.split("|")
        if row_number >= 2 and len(cells) > 2:  # header and separator rows skipped
            first = offset + row.index("|") + 1
            found += [(first + m.start(), m.group(1)) for m in SPAN.finditer(cells[1])]
        offset += len(row)
    return found


# ---------------------------------------------------------------------------------------------
# Checking


@functools.cache
def resolve(name: str, as_module: bool = False) -> tuple[object, str | None]:
    """(object, None) or (object or None, why it is wrong): the longest prefix that imports as
    a module, then attributes. A module reached as an attribute must import under that name."""
    parts = name.split(".")
    obj: object = None
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        try:
            obj = importlib.import_module(prefix)
        except ModuleNotFoundError as error:
            if error.name and (prefix == error.name or prefix.startswith(error.name + ".")):
                continue  # this prefix is not a module; try a shorter one
            return None, f"importing `{prefix}` fails: {type(error).__name__}: {error}"
        except Exception as error:  # any import failure is a finding
            return None, f"importing `{prefix}` fails: {type(error).__name__}: {error}"
        break
    else:
        return None, f"no module `{parts[0]}`"
    if as_module and i < len(parts):
        return None, f"not a module (`import {name}` fails; `{prefix}` is the longest module)"
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            return None, f"`{'.'.join(parts[:j])}` has no attribute `{parts[j]}`"
        obj = getattr(obj, parts[j])
    if isinstance(obj, ModuleType) and i < len(parts) and obj.__name__ != name:
        return obj, (
            f"a module reached as an attribute: `import {name}` fails; the module is "
            f"`{obj.__name__}`"
        )
    return obj, None


@functools.cache
def run_import(statement: str) -> str | None:
    """Execute one import statement; why it failed, or None. A third-party package missing
    from this environment is not the docs' fault and is let pass."""
    try:
        exec(compile(statement, "<doc import>", "exec"), {})
    except ModuleNotFoundError as error:
        if error.name and "." not in error.name and error.name != PACKAGE:
            return None  # a top-level package this environment lacks (an optional extra)
        return f"{type(error).__name__}: {error}"
    except Exception as error:  # any failure of the import is a finding
        return f"{type(error).__name__}: {error}"
    return None


@functools.cache
def package_classes(package: str = PACKAGE) -> dict[str, tuple[type, ...]]:
    """Every class the package defines, by name (all its modules imported)."""
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, f"{package}.", onerror=lambda _: None):
        try:
            importlib.import_module(info.name)
        except Exception:  # a module that fails to import names no class here
            continue
    classes: dict[str, set[type]] = {}
    for module_name, module in list(sys.modules.items()):
        if module_name == package or module_name.startswith(f"{package}."):
            for key, value in vars(module).items():
                if isinstance(value, type) and value.__module__.startswith(package):
                    classes.setdefault(key, set()).add(value)
    return {key: tuple(value) for key, value in classes.items()}


def check(claim: Claim) -> str | None:
    """Why the claim is false, or None."""
    if claim.kind == "import":
        return run_import(claim.name)
    if claim.kind == "class":
        owner, attribute = claim.name.split(".")
        try:
            classes = package_classes()
        except Exception as error:
            return f"importing `{PACKAGE}` fails: {type(error).__name__}: {error}"
        if owner not in classes:
            return None  # a class of another library (`ImageOps.exif_transpose`)
        if not any(hasattr(cls, attribute) for cls in classes[owner]):
            return f"`{owner}` has no attribute `{attribute}`"
        return None
    if claim.kind == "listed":
        # Only a module's listing names its members; `Class(...)` — `option` names arguments.
        # A module reached under a wrong name is reported as its own claim; its members are
        # still checked.
        parent_name, member = claim.name.rsplit(".", 1)
        parent = resolve(parent_name)[0]
        if not isinstance(parent, ModuleType):
            return None  # a class or a missing name: reported, if wrong, as its own claim
        return None if hasattr(parent, member) else f"`{parent_name}` has no attribute `{member}`"
    return resolve(claim.name, as_module=claim.kind == "module")[1]


def problems(claims: list[Claim]) -> list[str]:
    found = []
    for claim in dict.fromkeys(claims):
        why = check(claim)
        if why:
            found.append(f"{claim}: {why}")
    return found


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_claims() -> list[Claim]:
    return [
        claim
        for path in doc_files()
        for claim in parse(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]


# ---------------------------------------------------------------------------------------------
# The docs against the code


def test_every_api_name_in_the_docs_exists():
    found = problems(doc_claims())
    assert not found, "the docs name API the code does not have:\n" + "\n".join(found)


def test_the_parser_finds_every_kind_of_statement_in_the_docs():
    """A parser that finds nothing would pass the test above: it must find each kind."""
    kinds = {claim.kind for claim in doc_claims()}
    assert kinds >= {"name", "module", "member", "listed", "class", "import"}, kinds


# ---------------------------------------------------------------------------------------------
# The parser and the checker on texts with known errors (they must be reported)


def test_a_wrong_dotted_name_is_reported_with_its_line():
    text = "Intro.\n\nThe loss is `contextrast.ContextrastLoss`; see `contextrast.nonexistent`.\n"
    found = problems(parse(text, "T.md"))
    assert len(found) == 1 and found[0].startswith("T.md:3: `contextrast.nonexistent`"), found


def test_a_wrong_import_in_a_python_block_is_reported():
    text = (
        "Text.\n\n```python\nimport torch\nfrom contextrast import ContextrastLoss, Nonexistent\n"
        "model = torch.nn.Identity()  # not executed\nundefined_name()\n```\n"
    )
    found = problems(parse(text, "T.md"))
    assert len(found) == 1 and found[0].startswith("T.md:5: `from contextrast import"), found


def test_an_import_in_a_block_that_does_not_parse_is_still_run():
    text = "```python\nfrom contextrast.contrast import NoSuchLoss\nloss = (  # cut short\n```\n"
    found = problems(parse(text, "T.md"))
    assert len(found) == 1 and found[0].startswith("T.md:2: `from contextrast.contrast"), found


def test_an_import_of_a_missing_third_party_package_is_not_a_docs_error():
    text = "```python\nimport some_package_that_is_not_installed_here\n```\n"
    assert problems(parse(text, "T.md")) == []


def test_a_bare_name_in_a_module_is_checked_in_its_sentence_only():
    text = (
        "Samplers (`BaneSampler`, `NoSuchSampler` and\n`HardAnchorSampler` in "
        "`contextrast.contrast`) share `sampler(labels)`. Then `lovasz`, `max_pixels` and "
        "`other_option` in prose.\n"
    )
    found = problems(parse(text, "T.md"))
    assert len(found) == 1 and "T.md:1: `contextrast.contrast.NoSuchSampler`" in found[0], found


def test_a_class_attribute_is_checked_for_the_package_classes_only():
    text = "`ContextrastLoss.terms`, `ContextrastLoss.no_such_method()`, `ImageOps.exif_transpose`"
    found = problems(parse(text, "T.md"))
    assert len(found) == 1 and "ContextrastLoss.no_such_method" in found[0], found


def test_relative_names_resolve_under_the_package_unless_an_example_binds_them():
    text = "`functional.no_such_function` and `contrast.BaneSampler`; `functional.py` is a file.\n"
    found = problems(parse(text, "T.md"))
    assert len(found) == 1 and "`contextrast.functional.no_such_function`" in found[0], found
    bound = "```python\ncontrast = make_loss()\n```\n\n`contrast.terms(...)` is a method.\n"
    assert parse(bound, "T.md") == []


def test_a_module_reached_as_an_attribute_is_reported(tmp_path, monkeypatch):
    """The `contextrast.metrics` error: a listing under a name `import` cannot import."""
    (tmp_path / "docpkg" / "sub").mkdir(parents=True)
    (tmp_path / "docpkg" / "__init__.py").write_text("from docpkg.sub import inner as metrics\n")
    (tmp_path / "docpkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "docpkg" / "sub" / "inner.py").write_text("def mean_iou(): ...\nIoU = tuple\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    good = "`docpkg.sub.inner` — `mean_iou`, `IoU(iou, miou)`; also `from docpkg import metrics`.\n"
    assert problems(parse(good, "T.md", package="docpkg")) == []
    text = (
        "`docpkg.metrics` — `mean_iou` and `missing_metric`.\n\n"
        "The module `docpkg.metrics.mean_iou` too.\n\n"
        "```python\nfrom docpkg.metrics import mean_iou\n```\n"
    )
    found = problems(parse(text, "T.md", package="docpkg"))
    assert [line.split(": ")[0] for line in found] == ["T.md:6", "T.md:1", "T.md:1", "T.md:3"]
    assert "the module is `docpkg.sub.inner`" in found[1], found


def test_a_module_listing_checks_the_table_after_it():
    text = (
        "`contextrast.functional` — pure functions:\n\n| function | what |\n|---|---|\n"
        "| `distance_transform(mask)` | eq. 7, `(B, N)` |\n| `no_such_function(x)`, "
        "`layer_targets(a)` | `other_column_name` |\n"
    )
    found = problems(parse(text, "T.md"))
    assert len(found) == 1, found
    assert found[0].startswith("T.md:6: `contextrast.functional.no_such_function`"), found


def test_python_dash_m_names_a_module():
    text = (
        "`python -m contextrast.no_such_tool`\n\n```bash\ntorchrun -m contextrast.cli train\n```\n"
    )
    found = problems(parse(text, "T.md"))
    assert len(found) == 1 and "T.md:1: `contextrast.no_such_tool`" in found[0], found
