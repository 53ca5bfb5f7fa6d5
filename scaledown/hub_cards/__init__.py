"""Hub model cards built from a real run's configuration, training arguments and evaluation report, and upload."""

from .card import build_model_card, write_model_card
from .push import push_folder


__all__ = ["build_model_card", "push_folder", "write_model_card"]
