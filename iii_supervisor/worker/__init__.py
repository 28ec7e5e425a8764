"""The worker SDK: what a worker program imports to register functions and triggers."""

from .actions import TriggerAction
from .client import III, FunctionRef, InitOptions, Trigger, TriggerConfig, TriggerTypeRef, register_worker

__all__ = ["III", "FunctionRef", "InitOptions", "Trigger", "TriggerAction", "TriggerConfig", "TriggerTypeRef",
           "register_worker"]
