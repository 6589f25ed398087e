"""Kopf handlers, registered explicitly into a registry by ``kubetune_operator.main``."""
