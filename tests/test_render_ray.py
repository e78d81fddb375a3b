"""`voxtral-edge render` on Ray (extra `[fleet]`, which CI installs): one local cluster of 2 CPUs for the
whole module, since starting Ray takes seconds. Oracle: the local backend's files, which test_render.py
checks against `wave` and `Synthesizer.synthesize`."""

from __future__ import annotations

import json

import pytest

from conftest import RENDER_MAX_FRAMES
from voxtral_edge.errors import BundleError
from voxtral_edge.render import Settings, render
from voxtral_edge.render.fleet import RayPool
from voxtral_edge.render.job import bundle_identity, runtime_identity

ray = pytest.importorskip("ray")  # installed by voxtral-edge[fleet]
SETTINGS = Settings(max_frames=RENDER_MAX_FRAMES)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_renders_the_same_bytes_as_local_workers(cluster, rendered_catalog, tiny_bundle_dirs, tmp_path):
    catalog, one = rendered_catalog
    summary = render(catalog, tiny_bundle_dirs[0], tmp_path / "ray", settings=SETTINGS, ray=True, progress=False)
    assert (summary.backend, summary.workers, summary.rendered, summary.failed) == ("ray", 2, 30, 0)
    assert (tmp_path / "ray" / "index.jsonl").read_bytes() == (one / "index.jsonl").read_bytes()
    for record in map(json.loads, (one / "index.jsonl").read_text(encoding="utf-8").splitlines()):
        assert (tmp_path / "ray" / record["file"]).read_bytes() == (one / record["file"]).read_bytes()
    assert ray.is_initialized()  # a cluster the caller started is left running


def test_ray_actors_render_batches_to_the_same_bytes(cluster, rendered_catalog, tiny_bundle_dirs, tmp_path):
    """Each call gives an actor 4 items, rendered together (continuous batching inside the call)."""
    catalog, one = rendered_catalog
    summary = render(catalog, tiny_bundle_dirs[0], tmp_path / "ray4", settings=SETTINGS, ray=True, workers=1,
                     batch=4, progress=False)
    assert (summary.workers, summary.rendered, summary.failed) == (1, 30, 0)
    assert (tmp_path / "ray4" / "index.jsonl").read_bytes() == (one / "index.jsonl").read_bytes()


def test_a_killed_actor_loses_and_duplicates_nothing(cluster, rendered_catalog, tiny_bundle_dirs, tmp_path):
    catalog, one = rendered_catalog
    killed = []

    def kill_an_actor(state):
        if state.done == 3 and not killed:
            killed.append(state.pool.slots[0].actor)
            ray.kill(killed[0])

    summary = render(catalog, tiny_bundle_dirs[0], tmp_path / "ray", settings=SETTINGS, ray=True, progress=False,
                     observer=kill_an_actor)
    assert killed and summary.restarts == 1
    assert (summary.rendered, summary.failed) == (30, 0)  # each item written once
    assert (tmp_path / "ray" / "index.jsonl").read_bytes() == (one / "index.jsonl").read_bytes()
    assert not (tmp_path / "ray" / "errors.jsonl").exists()


def test_an_actor_refuses_a_bundle_that_differs_and_names_its_node(cluster, tiny_bundle_dirs):
    import socket

    pool = RayPool(tiny_bundle_dirs[0], 1, 1, None, bundle_id=bundle_identity(tiny_bundle_dirs[1]),
                   runtime=runtime_identity(), memory=10**8)
    try:
        with pytest.raises(BundleError) as e:
            pool.start()
    finally:
        pool.close()
    message = str(e.value)
    assert message.startswith(f"node {socket.gethostname()} (") and "differs from the driver's" in message


def test_the_cli_renders_on_the_running_cluster(cluster, rendered_catalog, render_rows, tiny_bundle_dirs, tmp_path,
                                                capsys):
    from conftest import write_csv_catalog
    from voxtral_edge.cli import main

    _, one = rendered_catalog
    catalog = write_csv_catalog(tmp_path / "catalog.csv", render_rows[:4])
    code = main(["render", str(catalog), "--bundle", str(tiny_bundle_dirs[0]), "--out", str(tmp_path / "out"),
                 "--ray", "--max-frames", str(RENDER_MAX_FRAMES)])
    assert code == 0 and "4 rendered" in capsys.readouterr().err
    for row in render_rows[:4]:
        name = f"{row['id']}.wav"
        assert (tmp_path / "out" / name).read_bytes() == (one / name).read_bytes()
