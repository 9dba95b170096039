"""The admin REST API (LiteLLM-compatible): keys, teams, users, spend."""

from gateway.admin.router import router

__all__ = ["router"]
