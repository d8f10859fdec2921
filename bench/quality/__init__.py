"""The recognition-quality table (the paper's Tables 2-4) on Fashion-MNIST-LT, as one resumable command.

Every cell is a run directory ``<root>/<setting>/<loss>/seed<k>`` (ensemble members
``<root>/ensemble/<family>/seed0``) trained by ``productrec train`` and evaluated by
``productrec evaluate`` (TTA per size, memorisation, top-1 voting through
``app.engine.ensemble.Ensemble``). A run with best.pt and a test_metrics.json of that
best.pt is skipped; an interrupted one continues from its last.pt with ``--resume``.

    nice -n 5 .venv/bin/python -m bench.quality --resume --report  # train + evaluate what is missing, then report
    .venv/bin/python -m bench.quality --report-only                  # docs/results.md, docs/img/*.png, bench/results/quality.json

The report reads only finished runs and lists the missing cells.

Modules: ``plan`` (the table's runs and their shared recipe), ``run`` (training and evaluating them),
``collect`` (the numbers of the finished runs), ``plot``, ``discussion`` and ``report`` (docs/results.md)
and ``cli``.
"""
