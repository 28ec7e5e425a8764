"""The worker-socket protocol: frames, messages and codec. Sans-IO: never imports trio."""

from . import messages as _messages
from .codec import CHUNK_KIND, Chunk, Connection, Event, decode_payload, encode, encode_chunk, encode_message
from .frames import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from .messages import *  # noqa: F403 - the message classes are this package's vocabulary

__all__ = [
    "CHUNK_KIND",
    "DEFAULT_MAX_FRAME_SIZE",
    "Chunk",
    "Connection",
    "Event",
    "FrameDecoder",
    "decode_payload",
    "encode",
    "encode_chunk",
    "encode_frame",
    "encode_message",
    *_messages.__all__,
]
