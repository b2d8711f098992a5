"""Importers: existing answer sets (RouterBench, any long-format table) -> depth-1 dersim caches.

Every importer reads its source into a `common.AnswerSet` and writes it through
`common.import_answer_set`, so all imported caches share one shape: per question the root state and
one state per model answer, no dedup across models, cost and scores as given by the source.
"""
