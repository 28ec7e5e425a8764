"""The iii worker protocol over WebSocket: the door for workers written with the official SDKs."""
