"""binderbox: a Binder service on one machine, without Docker or Kubernetes."""

__version__ = "0.1.0"
