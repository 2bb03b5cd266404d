"""The ``discovery.kubernetes`` and ``kubernetes`` sections of gateway.yaml, and the API client they describe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from extproc.errors import ConfigError

LABEL = "mcp-extproc.io/server"  # on a Service: the MCP server name it serves
ANNOTATION_PATH = "mcp-extproc.io/path"  # the MCP endpoint path on the Service (default /mcp)
ANNOTATION_PORT = "mcp-extproc.io/port"  # port name or number (default: the Service's first port)
ANNOTATION_GROUPS = "mcp-extproc.io/groups"  # comma-separated: only these groups reach this backend
ANNOTATION_USERS = "mcp-extproc.io/users"  # comma-separated: only these users reach this backend


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiAccess(_Model):
    """How to reach the API server: a kubeconfig file, or the pod's ServiceAccount (in-cluster)."""

    kubeconfig: Path | None = None
    context: str | None = None
    in_cluster: bool = False
    request_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0

    @model_validator(mode="after")
    def _one(self) -> ApiAccess:
        if (self.kubeconfig is None) == (not self.in_cluster):
            raise ValueError("give exactly one of kubeconfig or in_cluster: true")
        return self


class KubernetesDiscovery(ApiAccess):
    """Servers from Services carrying the ``mcp-extproc.io/server`` label in these namespaces (empty: all)."""

    namespaces: list[str] = []
    label_selector: str = LABEL
    watch_timeout_s: Annotated[int, Field(ge=1, le=3600)] = 300  # the API server ends a watch after this; resumed
    retry_s: Annotated[float, Field(gt=0, le=300)] = 1.0  # wait after a failed list/watch (API server down)


class Discovery(_Model):
    kubernetes: KubernetesDiscovery | None = None


def api_client(access: ApiAccess) -> object:
    """An official-client ``ApiClient`` for ``access``; ConfigError when the kubeconfig or token is unusable."""
    from kubernetes import client, config

    try:
        if access.in_cluster:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        return config.new_client_from_config(config_file=str(access.kubeconfig), context=access.context)
    except (config.ConfigException, OSError, ValueError) as e:
        raise ConfigError(f"kubernetes: cannot build an API client: {e}") from e


class KubernetesAuthz(ApiAccess):
    """SubjectAccessReviews for policy rules with ``kubernetes:``; prefixes as the API server's --oidc-*-prefix."""

    username_prefix: str = ""
    groups_prefix: str = ""
    cache_ttl_s: Annotated[float, Field(ge=0, le=3600)] = 10.0  # allow and deny are both cached this long
