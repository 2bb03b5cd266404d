"""Discovery through the official client against a loopback API server speaking the Kubernetes JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_api import FakeKubeApi

from extproc.kube.config import KubernetesDiscovery
from extproc.kube.discovery import KubeDiscovery
from extproc.kube.snapshot import SharedDiscovery, write_snapshot
from extproc.launcher import wait_until

LABEL = {"mcp-extproc.io/server": "tickets"}


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi().start()
    yield fake
    fake.stop()


def _discovery(api: FakeKubeApi, tmp_path: Path, **kw: object) -> KubeDiscovery:
    cfg = KubernetesDiscovery(
        kubeconfig=api.kubeconfig(tmp_path / "kubeconfig"), watch_timeout_s=2, retry_s=0.1, request_timeout_s=2, **kw
    )
    d = KubeDiscovery(cfg, reserved={"static"})
    d.start()
    assert d.synced.wait(10)
    return d


def _upstreams(d: KubeDiscovery, name: str) -> list[str]:
    route = d.routes.get(name)
    return [b.upstream for b in route.backends] if route else []


def test_labelled_services_appear_change_and_disappear(api: FakeKubeApi, tmp_path: Path) -> None:
    api.put_service("team-a", "tickets", 8000, LABEL, {"mcp-extproc.io/groups": "team-a"})
    api.put_service("team-a", "unlabelled", 8001)
    d = _discovery(api, tmp_path, namespaces=["team-a", "team-b"])
    try:
        assert list(d.routes) == ["tickets"] and _upstreams(d, "tickets") == ["127.0.0.1:8000"]
        api.put_service("team-b", "tickets", 8002, LABEL)  # unscoped: tried after the scoped one
        wait_until(lambda: len(_upstreams(d, "tickets")) == 2, 5, "second backend")
        assert [b.name for b in d.routes["tickets"].backends] == ["team-a/tickets", "team-b/tickets"]
        api.put_service("team-a", "tickets", 8000, LABEL, {"mcp-extproc.io/path": "/v2/mcp"})
        wait_until(lambda: d.routes["tickets"].backends[0].path == "/v2/mcp", 5, "modified path")
        api.delete_service("team-b", "tickets")
        api.delete_service("team-a", "tickets")
        wait_until(lambda: "tickets" not in d.routes, 5, "deleted")
        api.put_service("elsewhere", "tickets", 8003, LABEL)  # a namespace not watched
        api.put_service("team-a", "static", 8004, {"mcp-extproc.io/server": "static"})  # gateway.yaml has it
        api.put_service("team-a", "last", 1, {"mcp-extproc.io/server": "last"})
        wait_until(lambda: "last" in d.routes, 5, "marker")
        assert set(d.routes) == {"last"}
    finally:
        d.close()


def test_watch_resumes_from_bookmarks_and_relists_after_410(api: FakeKubeApi, tmp_path: Path) -> None:
    api.put_service("ns", "tickets", 8000, LABEL)
    d = _discovery(api, tmp_path, namespaces=["ns"])
    try:
        api.put_service("ns", "other", 1, {"x": "y"})  # unlabelled changes move the version; bookmarks carry it
        rv_after = api.rv
        wait_until(
            lambda: any(f"resourceVersion={rv_after}" in r and "watch=true" in r.lower() for r in api.requests),
            10,
            "resume",
        )
        assert d.lists == 2  # Services and EndpointSlices listed once each, then resumed by resourceVersion
        api.stop()  # the API server goes away ...
        api.put_service("ns", "tickets2", 8001, {"mcp-extproc.io/server": "fresh"})
        api.compact()  # ... and its history is compacted meanwhile
        wait_until(lambda: not d.connected, 5, "disconnect noticed")
        assert _upstreams(d, "tickets") == ["127.0.0.1:8000"]  # last known set kept
        api.start()
        wait_until(lambda: "fresh" in d.routes, 10, "re-listed after 410 Gone")
        assert d.lists == 4 and d.connected  # both re-listed
    finally:
        d.close()


def test_a_broken_service_is_reported_and_its_last_good_entry_stays(api: FakeKubeApi, tmp_path: Path) -> None:
    api.put_service("ns", "tickets", 8000, LABEL)
    api.put_service("ns", "bad", 8000, {"mcp-extproc.io/server": "Not_A_Name"})
    d = _discovery(api, tmp_path, namespaces=["ns"])
    try:
        assert set(d.routes) == {"tickets"}
        assert "Service ns/bad" in d.problems[("ns", "bad")] and "name" in d.problems[("ns", "bad")]
        api.put_service("ns", "tickets", 8000, LABEL, {"mcp-extproc.io/port": "nope"})
        wait_until(lambda: ("ns", "tickets") in d.problems, 5, "problem noticed")
        assert d.problems[("ns", "tickets")] == "Service ns/tickets: no port 'nope'"
        assert _upstreams(d, "tickets") == ["127.0.0.1:8000"]
    finally:
        d.close()


def test_all_namespaces_and_headless(api: FakeKubeApi, tmp_path: Path) -> None:
    api.put_service("a", "tickets", 8000, LABEL)
    api.put_service("b", "headless", 8000, {"mcp-extproc.io/server": "h"}, cluster_ip="None")
    d = _discovery(api, tmp_path)
    try:
        assert set(d.routes) == {"tickets"} and "headless" in d.problems[("b", "headless")]
        assert any(r.startswith("/api/v1/services?") for r in api.requests)
    finally:
        d.close()


def test_a_service_whose_pods_are_all_unready_stops_receiving_traffic(api: FakeKubeApi, tmp_path: Path) -> None:
    api.put_service("team-a", "tickets", 8000, LABEL, {"mcp-extproc.io/groups": "team-a"})
    api.put_service("team-b", "tickets", 8002, LABEL)
    api.put_service("team-b", "starting", 8003, {"mcp-extproc.io/server": "starting"}, ready=False)
    api.put_service("team-b", "no-slice", 8004, {"mcp-extproc.io/server": "no-slice"}, ready=None)
    d = _discovery(api, tmp_path, namespaces=["team-a", "team-b"])
    try:
        assert set(d.routes) == {"tickets"}  # no ready endpoint (or no EndpointSlice at all): not routed
        assert d.unready == {("team-b", "starting"), ("team-b", "no-slice")}
        assert [b.name for b in d.routes["tickets"].backends] == ["team-a/tickets", "team-b/tickets"]
        # Every pod of team-a's Service turns unready (one terminating, one failing its probe): its traffic goes
        # to the other backend of the same name; a pod ready again brings it back.
        api.set_endpoints("team-a", "tickets", [("10.0.0.1", False), ("10.0.0.2", False)])
        wait_until(lambda: _upstreams(d, "tickets") == ["127.0.0.1:8002"], 5, "team-a withdrawn")
        api.set_endpoints("team-a", "tickets", [("10.0.0.1", False), ("10.0.0.2", True)])
        wait_until(lambda: len(_upstreams(d, "tickets")) == 2, 5, "team-a back")
        api.set_endpoints("team-b", "starting", [("10.0.0.3", None)])  # no ready condition: read as ready
        wait_until(lambda: "starting" in d.routes, 5, "ready without a condition")
        api.set_endpoints("team-b", "starting", [])  # scaled to zero
        wait_until(lambda: "starting" not in d.routes, 5, "scaled to zero")
        api.delete_service("team-a", "tickets")
        api.delete_service("team-b", "tickets")
        wait_until(lambda: "tickets" not in d.routes, 5, "deleted with its slice")
    finally:
        d.close()


def test_one_watch_per_pod_handed_to_its_workers(api: FakeKubeApi, tmp_path: Path) -> None:
    for i in range(50):
        api.put_service("ns", f"svc-{i:02d}", 8000 + i, {"mcp-extproc.io/server": f"s{i:02d}"})
    snapshot = tmp_path / "discovery.json"
    cfg = KubernetesDiscovery(
        kubeconfig=api.kubeconfig(tmp_path / "kubeconfig"), watch_timeout_s=2, retry_s=0.1, request_timeout_s=2,
        namespaces=["ns"],
    )  # fmt: skip
    launcher = KubeDiscovery(cfg, reserved=set(), on_change=lambda entries: write_snapshot(snapshot, entries))
    workers = [SharedDiscovery(snapshot, reserved={"s00"}, poll_s=0.02) for _ in range(4)]
    launcher.start()
    try:
        assert launcher.synced.wait(10)
        for w in workers:
            w.start()
        wait_until(lambda: all(len(w.routes) == 49 for w in workers), 5, "every worker has the set")  # s00 static
        api.set_endpoints("ns", "svc-07", [("10.0.0.7", False)])
        api.put_service("ns", "late", 9000, {"mcp-extproc.io/server": "late"})
        wait_until(lambda: all("late" in w.routes and "s07" not in w.routes for w in workers), 5, "a change")
        assert workers[0].routes["s01"].backends[0].upstream == "127.0.0.1:8001"
        # The API server saw one list and one watch per resource: not one per worker.
        lists = [r for r in api.requests if "watch=" not in r.lower()]
        assert sorted(r.split("?")[0] for r in lists) == [
            "/api/v1/namespaces/ns/services", "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices",
        ]  # fmt: skip
        snapshot.write_text("not json")  # a broken snapshot keeps the last good set
        assert not workers[0].check() and "late" in workers[0].routes
    finally:
        launcher.close()
        for w in workers:
            w.close()
