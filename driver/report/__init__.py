"""The run's report, from its Parquet tables alone: ``write`` (report.md and report.html), ``html`` (the
self-contained page), ``plots``, ``headline`` (control range against random), ``strength`` (reasoning
strength), ``steered_texts`` (completions side by side), ``stages`` (wall time by stage) and ``tables``
(the Parquet schemas the run writes and the report reads)."""
