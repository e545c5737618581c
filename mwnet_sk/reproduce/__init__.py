"""Reproducing Shu et al. (NeurIPS 2019) with the library: the paper's numbers and the runs.

This subpackage imports the library and is never imported by it.

* :mod:`~mwnet_sk.reproduce.paper`: the paper's result tables and the experiment registry
  (plain data, no torch).
* :mod:`~mwnet_sk.reproduce.protocols`: the authors' settings per script, as named
  estimator presets (``"mwnet-2019-noise"``, ``"mwnet-2019-imbalance"``, ``"mwnet-2020"``).
* :mod:`~mwnet_sk.reproduce.runner`: :class:`~mwnet_sk.reproduce.runner.RunConfig` and the one
  runner behind ``mwnet-sk reproduce``.
* :mod:`~mwnet_sk.reproduce.baselines`: the plain and fine-tuned baselines of the tables (the
  library's :class:`~mwnet_sk.baselines.PlainClassifier`, through ``plain_counterpart``).
* :mod:`~mwnet_sk.reproduce.report`: results tables, provenance and figures (shared with the demo).
* :mod:`~mwnet_sk.reproduce.fixtures`: tiny data sets in the real file formats (tests, ``--smoke``).
* :mod:`~mwnet_sk.reproduce.demo` and :mod:`~mwnet_sk.reproduce.benchmark`: the digits demo and
  the step, fit-epoch and data-parallel timings behind ``mwnet-sk demo`` and ``mwnet-sk benchmark``.

Import what you need from the submodules; this package itself imports nothing heavy.
"""
