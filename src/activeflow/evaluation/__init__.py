"""The evaluation harness: label-efficiency benchmarks, simulated labellers and the
data they run on (scikit-learn digits, synthetic shapes). Nothing in the pipeline
needs it but ``cycle --simulate``, ``demo`` and ``benchmark``."""
