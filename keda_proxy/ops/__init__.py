"""
Running the interceptor: its configuration, the admin, metrics and
profiling ports, logs, traces and metrics push.
"""

from keda_proxy.ops._config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
