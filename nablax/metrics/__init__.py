"""The papers' measurements, one concept per file. Metrics read a ``Trace`` and pull signals back or push
them forward through it; they never depend on how a particular layer is implemented."""
