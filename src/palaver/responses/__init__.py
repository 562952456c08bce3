"""The OpenAI Responses API, translated to the chat pipeline.

``request`` reads a Responses request into a chat payload; ``stage`` is the pipeline's
conversation stage for it (the chain or conversation it continues, what it stores);
``output`` and ``events`` turn the chat answer back into a response object or its stream of
events; ``store`` and ``backends`` keep stored responses (memory, sqlite, redis); ``routes``
are the HTTP handlers.
"""

from palaver.responses.stage import Responses, ResponseTurn
from palaver.responses.store import ResponseStore, StoredResponse

__all__ = ["ResponseStore", "ResponseTurn", "Responses", "StoredResponse"]
