"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

* ``on_files``: every file under ``benchmarks/results/`` (the committed benchmark runs) is part
  of the site at ``assets/results/<run>/<file>``, read from where it is: nothing is copied into
  docs/. A run's ``results.md`` becomes a page (outside the nav), its plots and JSON static files.
* ``on_page_markdown``: the markers of ``docs/models.md`` become the model table generated from
  the registry (``scripts/model_table.py``).

:class:`ExampleSections` is a griffe extension of the API pages (mkdocstrings' ``extensions``).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import griffe
from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_URI = "assets/results"


def _model_table():
    """scripts/model_table.py, imported by path (scripts/ is no package)."""
    module = sys.modules.get("se_docs_model_table")
    if module is None:
        spec = importlib.util.spec_from_file_location(
            "se_docs_model_table", Path(__file__).with_name("model_table.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def on_files(files: Files, config, **kwargs) -> Files:
    for path in sorted(RESULTS.rglob("*")):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(RESULTS).parts):
            continue
        uri = f"{RESULTS_URI}/{path.relative_to(RESULTS).as_posix()}"
        if files.get_file_from_path(uri) is not None:
            raise ValueError(f"docs/{uri} exists and would hide benchmarks/results/: remove it")
        files.append(
            File.generated(config, uri, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV)
        )
    return files


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if page.file.src_uri == "models.md":
        # re-imported on each build, so mkdocs serve shows a changed registry or table script
        sys.modules.pop("se_docs_model_table", None)
        return _model_table().render(markdown)
    return markdown


class ExampleSections(griffe.Extension):
    """Reads the docstrings' ``Example:`` sections as Google style's ``Examples:``.

    Griffe takes a singular ``Example:`` for an admonition, whose ``>>>`` lines Markdown would
    render as nested quotes (and a printed list as a link); ``Examples:`` is parsed as doctest
    code. The docstrings are left as they are (Napoleon and Google's guide take both).
    """

    HEADER = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self.HEADER.sub(r"\1Examples:", obj.docstring.value)
