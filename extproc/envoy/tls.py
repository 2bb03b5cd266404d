"""TLS in the Envoy bootstrap: the listener (certificates reloaded from files through SDS, optional client
certificates), verified upstream TLS to MCP servers, and mutual TLS to a processor reached over TCP.

Kept apart from ``bootstrap.py``, which asks these builders for each listener's and cluster's transport socket
while it builds them: one writer per field, and nothing patches a rendered bootstrap afterwards. Every upstream
TLS context built here verifies the peer's certificate, unless a server opted out (``tls_insecure_skip_verify``).

Certificate rotation: the listener's certificate comes from an SDS file (``path_config_source``) whose secret
names the cert and key *files*; Envoy watches ``watch_directory`` and re-reads both when a file is moved into it
(how the kubelet, cert-manager and ``mv`` replace files), so new connections get the new certificate with no
restart and no dropped connection. Replace files atomically (write elsewhere, then rename).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import yaml

from extproc.envoy.config import ListenTls, Server
from extproc.envoy.fields import T, is_ip
from extproc.sections import split_hostport
from extproc.settings import Settings

log = logging.getLogger(__name__)
TLS_SOCKET = "envoy.transport_sockets.tls"
LISTENER_CERT = "listener_cert"
LISTENER_CA = "listener_client_ca"
TLS_PARAMS = {"tls_minimum_protocol_version": "TLSv1_2"}


def default_sds_dir() -> Path:
    """Where SDS files go when no bootstrap path says otherwise."""
    return Path(tempfile.gettempdir()) / "mcp-extproc-sds"


def _sds_ref(name: str, sds_dir: Path, watch: Path) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {
            "path_config_source": {"path": str(sds_dir / f"{name}.yaml"), "watched_directory": {"path": str(watch)}},
            "resource_api_version": "V3",
        },
    }


def sds_files(settings: Settings) -> dict[str, str]:
    """File name -> content of the SDS files the bootstrap refers to (written beside it)."""
    tls = settings.listen.tls
    if tls is None:
        return {}
    secret = {"@type": T + "extensions.transport_sockets.tls.v3.Secret"}
    docs = {
        LISTENER_CERT: {
            **secret,
            "name": LISTENER_CERT,
            "tls_certificate": {
                "certificate_chain": {"filename": str(tls.cert_file)},
                "private_key": {"filename": str(tls.key_file)},
                "watched_directory": {"path": str(_watch(tls))},
            },
        }
    }
    if tls.client_ca_file is not None:
        docs[LISTENER_CA] = {
            **secret,
            "name": LISTENER_CA,
            "validation_context": {
                "trusted_ca": {"filename": str(tls.client_ca_file)},
                "watched_directory": {"path": str(tls.client_ca_file.parent)},
            },
        }
    return {f"{name}.yaml": yaml.safe_dump({"resources": [doc]}, sort_keys=False) for name, doc in docs.items()}


def write_sds_files(settings: Settings, sds_dir: Path) -> None:
    """Write the SDS files (atomically: Envoy watches them too)."""
    files = sds_files(settings)
    if not files:
        return
    sds_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        tmp = sds_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(sds_dir / name)


def _watch(tls: ListenTls) -> Path:
    return tls.watch_directory or tls.cert_file.parent


SDS_NODE = {"id": "mcp-extproc", "cluster": "mcp-extproc"}  # the bootstrap's node: SDS requires one


def listener_transport_socket(tls: ListenTls | None, sds_dir: Path | None = None) -> dict[str, Any] | None:
    """DownstreamTlsContext: TLS 1.2+, ALPN h2 and http/1.1, certificate (and client CA) from SDS files.

    None for a plain-text listener. ``sds_dir`` is where the SDS files are written (default: ``default_sds_dir``).
    """
    if tls is None:
        return None
    sds_dir = sds_dir or default_sds_dir()
    common: dict[str, Any] = {
        "tls_params": TLS_PARAMS,
        "alpn_protocols": ["h2", "http/1.1"],
        "tls_certificate_sds_secret_configs": [_sds_ref(LISTENER_CERT, sds_dir, _watch(tls))],
    }
    if tls.client_ca_file is not None:
        common["validation_context_sds_secret_config"] = _sds_ref(LISTENER_CA, sds_dir, tls.client_ca_file.parent)
    return {
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": T + "extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": tls.require_client_cert,
            "common_tls_context": common,
        },
    }


def upstream_transport_socket(server: Server) -> dict[str, Any] | None:
    """UpstreamTlsContext for an MCP server: SNI, and the certificate verified (CA bundle, SAN) unless opted out.

    None for a server without ``tls: true`` (plain HTTP upstream)."""
    if not server.tls:
        return None
    assert server.upstream is not None  # servers with backends are refused tls: in settings
    host, _ = split_hostport(server.upstream)
    name = server.tls_server_name or host
    common: dict[str, Any] = {"tls_params": TLS_PARAMS}
    if not server.tls_insecure_skip_verify:  # the opt-out is logged by every processor at start (server_credentials)
        validation: dict[str, Any] = {"trusted_ca": {"filename": str(server.tls_ca_file or system_ca_bundle())}}
        validation["match_typed_subject_alt_names"] = [_san(name)]
        common["validation_context"] = validation
    return {
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": name,
            "common_tls_context": common,
        },
    }


def _san(name: str) -> dict[str, Any]:
    """The subject alternative name the peer's certificate must carry: ``name`` exactly, as an IP or DNS name."""
    return {"san_type": "IP_ADDRESS" if is_ip(name) else "DNS", "matcher": {"exact": name}}


SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine (the image)
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Fedora, Amazon Linux
    "/etc/ssl/cert.pem",  # macOS, BSD
)


def system_ca_bundle() -> str:
    """The host's CA bundle (Envoy wants a file to check SANs against), else certifi's."""
    for path in SYSTEM_CA_BUNDLES:
        if Path(path).is_file():
            return path
    import certifi

    return str(certifi.where())


def processor_transport_socket(settings: Settings) -> dict[str, Any] | None:
    """Envoy's side of mutual TLS to the processor: its client certificate, the processor's verified."""
    tls = settings.processor.tls
    if tls is None:
        return None
    host, _ = split_hostport(settings.processor.address)
    name = tls.server_name or host
    return {
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": name,
            "common_tls_context": {
                "tls_params": TLS_PARAMS,
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(tls.client_cert_file)},
                        "private_key": {"filename": str(tls.client_key_file)},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(tls.ca_file)},
                    "match_typed_subject_alt_names": [_san(name)],
                },
            },
        },
    }


def server_credentials(settings: Settings) -> Any:
    """gRPC server credentials of the processor: its certificate, and Envoy's client certificate required.

    Called once at the processor's start, so it also says, loudly, which upstreams are not verified."""
    import grpc

    for server in settings.servers:
        if server.tls_insecure_skip_verify:
            log.warning(
                "servers[%s].tls_insecure_skip_verify: the upstream certificate is NOT verified; anyone on the "
                "path can impersonate %s",
                server.name,
                server.upstream,
            )
    tls = settings.processor.tls
    if tls is None:
        return None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.ca_file.read_bytes(),
        require_client_auth=True,
    )
