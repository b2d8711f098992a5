"""dersim: Dynamic Ensemble Reasoning (DER) over an exact offline cache of LLM expert answers.

Pipeline, one sub-package per stage: recipe -> builder -> cache -> env -> trainer -> evaluation.
"""

__version__ = "0.1.0"
