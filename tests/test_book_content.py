"""The book's appendices are complete: the bibliography holds every paper the book cites and
cites every paper it holds; the API reference documents every public module of ``xnn_lab``."""

import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import xnn_lab

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"

# {cite}`a,b`, {cite:p}`a`, {cite:t}`a`, ... and {nocite}`a`, as sphinxcontrib-bibtex reads them.
CITE = re.compile(r"\{(?:no)?cite(?::\w+)?\}`([^`]+)`")
BIB_ENTRY = re.compile(r"^@(\w+)\s*\{\s*([^,\s]+)\s*,", re.MULTILINE)
AUTODOC = re.compile(r"^\.\.\s+auto(\w+)::\s*(\S+)\s*$((?:\n[ \t]+:.*)*)", re.MULTILINE)


def _book_texts():
    """The markdown the book renders: its .md pages and its notebooks' markdown cells."""
    for path in sorted(BOOK.glob("*.md")):
        yield path.name, path.read_text()
    for path in sorted(BOOK.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        yield path.name, "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")


def _cited_keys():
    cited = {}
    for name, text in _book_texts():
        for group in CITE.findall(text):
            for key in group.split(","):
                cited.setdefault(key.strip(), set()).add(name)
    return cited


def _bib_keys():
    entries = BIB_ENTRY.findall((BOOK / "references.bib").read_text())
    return [key for kind, key in entries if kind.lower() not in ("comment", "string", "preamble")]


def test_bib_keys_are_unique():
    keys = _bib_keys()
    assert len(keys) == len(set(keys)), sorted({key for key in keys if keys.count(key) > 1})


def test_every_cited_paper_is_in_the_bibliography():
    missing = {key: sorted(pages) for key, pages in _cited_keys().items() if key not in set(_bib_keys())}
    assert missing == {}, f"cited but not in book/references.bib: {missing}"


def test_every_paper_in_the_bibliography_is_cited():
    listing = (BOOK / "bibliography.md").read_text()
    assert "{bibliography}" in listing, "book/bibliography.md has no {bibliography} directive"
    if ":all:" in listing:  # the bibliography lists every entry, cited or not
        return
    uncited = sorted(set(_bib_keys()) - set(_cited_keys()))
    assert uncited == [], f"in book/references.bib but cited nowhere (cite them, or {{nocite}} them): {uncited}"


def test_cite_pattern_reads_the_roles_the_book_uses():
    """A guard: the pattern finds the citations the chapters are known to make."""
    text = "as {cite}`rudin2019stop` and {cite:p}`a, b` show; {cite:t}`c`; {nocite}`d`"
    assert CITE.findall(text) == ["rudin2019stop", "a, b", "c", "d"]
    assert "rudin2019stop" in _cited_keys() and len(_cited_keys()) > 10


def _public_modules():
    modules = [info.name for info in pkgutil.walk_packages(xnn_lab.__path__, "xnn_lab.")]
    return ["xnn_lab"] + [name for name in modules if not any(part.startswith("_") for part in name.split("."))]


def _defined_here(module):
    """Public functions and classes that ``module`` defines itself (not re-exported ones)."""
    names = getattr(module, "__all__", None) or [name for name in vars(module) if not name.startswith("_")]
    return {name for name in names
            if (inspect.isfunction(getattr(module, name, None)) or inspect.isclass(getattr(module, name, None)))
            and getattr(module, name).__module__ == module.__name__}


def _documented():
    """(modules autodoc'd whole, {module: names documented in it}) from book/api.md."""
    whole, named = set(), {}
    for kind, target, options in AUTODOC.findall((BOOK / "api.md").read_text()):
        if kind == "module":
            members = re.search(r":members:(.*)", options)
            listed = [name.strip() for name in members.group(1).split(",") if name.strip()] if members else []
            if members and not listed:
                whole.add(target)
                # A package face autodoc'd whole documents every name of its __all__, where it is defined.
                for public in getattr(importlib.import_module(target), "__all__", []):
                    obj = getattr(importlib.import_module(target), public)
                    if inspect.isfunction(obj) or inspect.isclass(obj):
                        named.setdefault(obj.__module__, set()).add(obj.__name__)
            named.setdefault(target, set()).update(listed)
            continue
        module_name, _, name = target.rpartition(".")
        obj = getattr(importlib.import_module(module_name), name)
        named.setdefault(obj.__module__, set()).add(obj.__name__)
    return whole, named


def test_api_reference_documents_every_public_module():
    whole, named = _documented()
    undocumented = [name for name in _public_modules()
                    if _defined_here(importlib.import_module(name)) and name not in whole and name not in named]
    assert undocumented == [], f"public modules that book/api.md does not autodoc: {undocumented}"


def test_api_reference_documents_every_public_function_and_class():
    whole, named = _documented()
    missing = {}
    for name in _public_modules():
        if name in whole:
            continue
        left = _defined_here(importlib.import_module(name)) - named.get(name, set())
        if left:
            missing[name] = sorted(left)
    assert missing == {}, f"public functions and classes that book/api.md leaves out: {missing}"
