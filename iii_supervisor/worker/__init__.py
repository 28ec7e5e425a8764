"""The worker SDK: what a worker program imports to register functions and triggers."""

from .actions import TriggerAction
from .client import III, FunctionRef, InitOptions, Trigger, TriggerConfig, TriggerTypeRef, register_worker
from .external import HttpInvocationConfig
from .logger import Logger  # (`logger`, the instance, is iii_supervisor.logger: .logger is the module)

__all__ = ["III", "FunctionRef", "HttpInvocationConfig", "InitOptions", "Logger", "Trigger", "TriggerAction",
           "TriggerConfig", "TriggerTypeRef", "register_worker"]
