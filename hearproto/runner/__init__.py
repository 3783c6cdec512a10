"""The experiments behind the book: the papermill runner (:mod:`~hearproto.runner.experiments`),
the shared training runs of each scale (:mod:`~hearproto.runner.runs`), the paper's tables
(:mod:`~hearproto.runner.tables`) and numbers (:mod:`~hearproto.runner.paper`), and result
rows with their provenance (:mod:`~hearproto.runner.results`). Training never imports it."""
