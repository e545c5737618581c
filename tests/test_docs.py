"""The documentation: `mkdocs build --strict` passes, the API pages render cleanly, and the
pages agree with the code."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mwnet_sk.reproduce import paper

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RAW_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`")


def _nav_files(text):
    return re.findall(r":\s*([\w/.-]+\.md)\s*$", text, flags=re.M)


def test_nav_pages_exist():
    config = (ROOT / "mkdocs.yml").read_text()
    missing = [p for p in _nav_files(config) if not (DOCS / p).is_file()]
    assert not missing
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    moved = set(re.search(r"not_in_nav: \|\n((?:  .*\n)+)", config).group(1).split())
    assert pages - set(_nav_files(config)) == moved  # every page is in the nav or a moved-page pointer


def test_reproduction_page_has_the_registered_paper_numbers():
    page = (DOCS / "reproduction.md").read_text()
    for name, exp in paper.EXPERIMENTS.items():
        assert f"`{name}`" in page or name == "clothing1m", name
        for method in ("BaseModel", "Fine-tuning", "Ours", "Cross Entropy"):
            mean, std = exp.paper_accuracy(method)
            if mean is not None:
                cell = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
                assert cell in page, (name, method, cell)
    for protocol in ("mwnet-2019-noise", "mwnet-2019-imbalance", "mwnet-2020"):
        assert f"`{protocol}`" in page


def test_figures_are_small_pngs():
    pngs = sorted((DOCS / "figures").glob("*.png"))
    assert {p.name for p in pngs} >= {"weight_function.png", "weight_distribution.png", "weight_variation.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 100_000


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    # Build from a copy of the docs with the package linked in, so the checkout stays clean.
    tmp = tmp_path_factory.mktemp("docs")
    work = tmp / "project"
    work.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", work / "mkdocs.yml")
    shutil.copytree(DOCS, work / "docs")
    (work / "mwnet_sk").symlink_to(ROOT / "mwnet_sk", target_is_directory=True)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp / "site")],
        cwd=work, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / "site"


def test_no_raw_sphinx_roles_in_the_built_pages(site):
    raw = {}
    for page in site.rglob("*.html"):
        found = RAW_ROLE.findall(page.read_text())
        if found:
            raw[str(page.relative_to(site))] = len(found)
    assert not raw, f"raw Sphinx roles shown as text: {raw}"


def test_api_pages_render_cleanly(site):
    estimator = (site / "api" / "estimator" / "index.html").read_text()
    assert "MetaWeightClassifier" in estimator and "meta_interval" in estimator
    # roles are links: a class on another page, a method on the same page
    assert 'href="../augment/#mwnet_sk.augment.BatchAugment"' in estimator
    assert re.search(r'href="#mwnet_sk\.estimator\.TrainingDivergedError"[^>]*><code>TrainingDivergedError', estimator)
    # parameters are a list (a table cut long defaults off), and routed ones are not "required"
    assert "iterator_meta__num_workers" in estimator and ">required<" not in estimator
    assert "doc-section-item" in estimator and "<th>Default</th>" not in estimator
    augment = (site / "api" / "augment" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", " ", augment)
    assert "Number of channels implied by" in text and "int or None :" not in text  # a property's docstring
    for old, new in (("bilevel", "core/bilevel"), ("weight-net", "core/weight-net"),
                     ("experiments", "reproduce/runner"), ("benchmark", "reproduce/benchmark")):  # fmt: skip
        moved = (site / "api" / old / "index.html").read_text()
        assert f'url=../{new}/"' in moved, old
    for page in ("paper", "protocols", "runner", "report", "fixtures", "demo", "benchmark"):
        assert (site / "api" / "reproduce" / page / "index.html").is_file(), page
    baselines = (site / "api" / "baselines" / "index.html").read_text()
    for name in ("PlainClassifier", "plain_counterpart"):
        assert f'id="mwnet_sk.baselines.{name}"' in baselines, name
    callbacks = (site / "api" / "callbacks" / "index.html").read_text()
    for name in ("Checkpoint", "LoadInitState", "CheckpointError", "CheckpointMismatchError", "WeightMonitor",
                 "MetaScoring"):  # fmt: skip
        assert f'id="mwnet_sk.callbacks.{name}"' in callbacks, name
    assert "run_data_parallel_benchmark" in (site / "api" / "reproduce" / "benchmark" / "index.html").read_text()


def test_quoted_demo_numbers_are_those_of_the_figures_run():
    import json

    run = json.loads((DOCS / "figures" / "demo.json").read_text())
    plain, mwnet = f"{100 * run['plain_accuracy']:.2f}%", f"{100 * run['mwnet_accuracy']:.2f}%"
    weights = f"{run['mean_weight_clean']:.3f} / {run['mean_weight_noisy']:.3f}"
    assert run["seed"] == 0 and run["epochs"] == 60 and run["noise_rate"] == 0.4
    for page in (DOCS / "user-guide" / "figures.md", DOCS / "reproduction.md", ROOT / "README.md"):
        text = page.read_text()
        assert plain in text and mwnet in text, page.name
    for page in (DOCS / "reproduction.md", ROOT / "README.md"):
        assert f"| 0 | {plain} | {mwnet} | {weights} |" in page.read_text(), page.name


def _extension():
    sys.path.insert(0, str(DOCS / "_griffe"))
    try:
        from sphinx_roles import SphinxRoles
    finally:
        sys.path.remove(str(DOCS / "_griffe"))
    return SphinxRoles


def test_griffe_extension_on_a_small_package(tmp_path):
    griffe = pytest.importorskip("griffe")
    package = tmp_path / "toypkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .mod import Thing\n")
    (package / "mod.py").write_text(textwrap.dedent('''
        class Error(Exception):
            """Raised."""


        def helper():
            """Help."""


        class Thing:
            """See :class:`Error`, :meth:`run`, :func:`~toypkg.mod.helper`, :class:`torch.nn.Module`
            and :meth:`the runner <toypkg.mod.Thing.run>`.

            Parameters
            ----------
            a, b : str
                File names.
            """

            def __init__(self, a="x.pt", b="y.json"):
                pass

            @property
            def size(self) -> int:
                """int : number of items."""

            def run(self):
                """Run."""
    '''))
    loader = griffe.GriffeLoader(extensions=griffe.load_extensions(_extension()), docstring_parser="numpy",
                                 search_paths=[str(tmp_path)])  # fmt: skip
    thing = loader.load("toypkg")["mod.Thing"]
    doc = thing.docstring.value
    assert not RAW_ROLE.search(doc)
    for identifier, title in (("toypkg.mod.Error", "Error"), ("toypkg.mod.Thing.run", "run()"),
                              ("toypkg.mod.helper", "helper()"), ("torch.nn.Module", "torch.nn.Module"),
                              ("toypkg.mod.Thing.run", "the runner")):  # fmt: skip
        assert f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>' in doc
    (parameters,) = [s for s in thing.docstring.parsed if s.kind is griffe.DocstringSectionKind.parameters]
    assert {p.name: p.default for p in parameters.value} == {"a": "'x.pt'", "b": "'y.json'"}
    assert thing["size"].docstring.value == "Number of items."


def test_griffe_extension_on_the_package():
    griffe = pytest.importorskip("griffe")
    loader = griffe.GriffeLoader(extensions=griffe.load_extensions(_extension()))
    package = loader.load("mwnet_sk", try_relative_path=False)
    doc = package["estimator.MetaWeightClassifier"].docstring.value
    # a name the module imports resolves to where it is defined
    assert re.search(r'<autoref identifier="mwnet_sk\.[\w.]*TrainingDivergedError" optional><code>TrainingDivergedError</code>', doc)
    assert not RAW_ROLE.search(doc)
