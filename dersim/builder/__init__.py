"""The one-time cache builder: questions -> expert calls (breadth-first over distinct answers) ->
scores and embeddings -> Parquet cache."""
