"""eventbus: a durable HTTP event bus on Twisted, Klein and PostgreSQL."""

__version__ = "0.1.0"
