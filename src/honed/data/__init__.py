"""Data: files in several formats → one Conversation type → token ids with a loss mask."""

from honed.data.conversation import Conversation, Message

__all__ = ["Conversation", "Message"]
