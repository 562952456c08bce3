"""Token counting (offline), context windows, and each request's token budget."""

from palaver.tokens.budget import Budget, Budgets, Counts
from palaver.tokens.counting import Counter
from palaver.tokens.encodings import ENCODINGS, EncodingName, get_encoding
from palaver.tokens.models import BUILT_IN, ModelInfo, ModelTable, built_in

__all__ = [
    "BUILT_IN",
    "ENCODINGS",
    "Budget",
    "Budgets",
    "Counter",
    "Counts",
    "EncodingName",
    "ModelInfo",
    "ModelTable",
    "built_in",
    "get_encoding",
]
