"""Benchmarks: ``python -m bench`` prints figures as a table.

Each module ``bench/<area>.py`` exposes ``run(size: int, workdir: Path) ->
list[Result]``. Targets live here, never in timed unit tests.
"""
