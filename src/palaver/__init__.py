"""palaver: an OpenAI-compatible chat-completions gateway."""

from __future__ import annotations

from palaver.app import Palaver, create_app
from palaver.config import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Palaver", "Settings", "create_app", "load_settings"]
__version__ = "0.1.0"
