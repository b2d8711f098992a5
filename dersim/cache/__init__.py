"""The cache: Parquet tables of questions, states (scored, embedded) and transitions, plus a
manifest."""
