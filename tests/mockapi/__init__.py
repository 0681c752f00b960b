"""Mock model APIs for running the real agent CLIs offline."""

from .anthropic import AnthropicMock
from .base import Faults, MockServer, Recorded, Script
from .gemini import GeminiMock
from .openai_chat import ChatMock
from .openai_responses import ResponsesMock

__all__ = [
    "AnthropicMock",
    "ChatMock",
    "Faults",
    "GeminiMock",
    "MockServer",
    "Recorded",
    "ResponsesMock",
    "Script",
]
