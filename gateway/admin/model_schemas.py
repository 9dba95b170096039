"""The bodies of ``/model/new``, ``/model/update`` and ``/model/delete`` (LiteLLM's ``Deployment``,
``updateDeployment`` and ``ModelInfoDelete``), for the handlers and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DeploymentParams(BaseModel):
    """``litellm_params``: ``model`` is required; every other param is the provider's (checked when
    the deployment is built, as a config file's)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=512, description='"<provider>/<upstream model>"')


class NewModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1, max_length=256)
    litellm_params: DeploymentParams
    model_info: dict[str, Any] | None = None


class UpdateModel(BaseModel):
    """LiteLLM's ``updateDeployment``: the id in ``model_info.id`` (or top-level ``id``, as the
    ``litellm-proxy`` client sends it); ``litellm_params`` merged into the stored ones."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, min_length=1, max_length=256)
    model_name: str | None = Field(default=None, min_length=1, max_length=256)
    litellm_params: dict[str, Any] | None = None
    model_info: dict[str, Any] | None = None


class DeleteModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
