"""The speech service under pressure: aging over strict priority, shared syntheses, deadlines, disconnects
and /metrics. Oracles: the Synthesizer run alone with the same seed (bit for bit), the scheduler's own
step counts, OpenAI's error shape, and prometheus_client's own parser for the metrics."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve import LONG, alone, raw_request, running, speech, wait_for

from voxtral_edge.runtime import Synthesizer
from voxtral_edge.serve.app import ServiceConfig
from voxtral_edge.serve.scheduler import Job, Scheduler

pytestmark = pytest.mark.filterwarnings("ignore::voxtral_edge.runtime.RunawayWarning")  # random weights never end

# one prompt (several sentences, or one too long for the context, are a script of pieces: neither cached nor shared)
SENTENCE = "In two hundred metres, turn right at the roundabout."


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dirs):
    return tiny_bundle_dirs[0]


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    config = ServiceConfig(bundle=bundle, model_name="voxtral-tiny", cache_dir=tmp_path_factory.mktemp("phrases"),
                           queue_limit=4)
    with running(config) as (url, srv):
        yield url, srv.service


def metrics(url: str, **kwargs) -> dict:
    """{(name, labels as a sorted tuple): value} from GET /metrics, read by prometheus_client's parser."""
    response = httpx.get(url + "/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}



def aging_gaps(media, media_chunks, rise, nav_frames, chunk_frames) -> list[int]:
    """The steps before each of a media job's chunks under a navigation flood, checked against the aging
    guarantee: no audio before it rose, its first chunk within the rise and the prompt in progress, every
    later one within a rise, a prompt and a chunk."""
    starts = [media.submitted_step] + media_chunks[:-1]  # (the last wake is the end)
    gaps = [b - a for a, b in zip(starts, media_chunks)]
    assert media_chunks[0] - media.submitted_step >= rise  # strict priority until it rose
    assert gaps[0] <= rise + nav_frames + 1
    assert all(gap <= rise + nav_frames + chunk_frames for gap in gaps[1:]), gaps
    return gaps

def test_aging_bounds_how_long_a_flood_of_navigation_delays_media(bundle):
    """A navigation prompt always waiting: without aging media never makes a frame; with it, media makes
    each chunk within its rise (media + message + assistant bounds) plus the rest of the navigation prompt
    in progress, and no navigation prompt is ever interrupted."""
    synth = Synthesizer.open(bundle)
    aging = {"assistant": 3, "message": 4, "media": 5, "background": 6}
    rise, nav_frames, chunk_frames = 5 + 4 + 3, 4, 4
    flooding, navs, media_chunks = threading.Event(), [], []

    def flood(scheduler):
        def submit():
            job = Job(synth.start("Turn left now.", "casual_male", seed=len(navs), max_frames=nav_frames),
                      "navigation", keep=True)
            navs.append(scheduler.submit(job))

        def on_end(job):
            if job.priority == "navigation" and flooding.is_set():
                submit()
        scheduler.on_end = on_end
        for _ in range(2):  # one in progress, one waiting: the navigation line is never empty
            submit()

    # strict priority alone: media waits as long as the flood lasts
    flooding.set()
    scheduler = Scheduler(synth, queue_limit=8, aging={})
    flood(scheduler)
    media = scheduler.submit(Job(synth.start(LONG, "neutral_female", seed=7, max_frames=12), "media", keep=True))
    wait_for(lambda: scheduler.counters["steps"] >= 3 * rise, what="the flood")
    assert media.frames == 0 and media.first_audio_step is None
    flooding.clear()
    scheduler.stop()

    # with aging
    flooding.set()
    navs.clear()
    scheduler = Scheduler(synth, queue_limit=8, aging=aging)
    flood(scheduler)
    media = Job(synth.start(LONG, "neutral_female", seed=7, max_frames=12), "media", keep=True)
    recording = media.recording
    recording.wakers.add(lambda: media_chunks.append(scheduler.counters["steps"]))
    scheduler.submit(media)
    wait_for(lambda: media.state == "done", what="the media job")
    flooding.clear()
    wait_for(lambda: all(not j.active for j in navs), what="the flood to end")
    scheduler.stop()
    gaps = aging_gaps(media, media_chunks, rise, nav_frames, chunk_frames)
    assert len(navs) > 2 * len(gaps) and all(j.suspensions == 0 for j in navs)  # no prompt was interrupted
    assert media.risen == len(gaps) - 1 and media.suspensions >= len(gaps) - 2
    assert b"".join(recording.chunks) == alone(bundle, LONG, "neutral_female", 7, 12)  # paused often, never changed


def test_identical_requests_share_one_synthesis_each_at_its_own_pace(server, bundle):
    url, service = server
    body = {"input": SENTENCE, "voice": "fr_female", "seed": 31, "max_frames": 60, "priority": "media",
            "response_format": "pcm"}
    before = metrics(url)
    with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b, httpx.Client(timeout=60) as slow:
        with a.stream("POST", url + "/v1/audio/speech", json=body) as first:
            parts = first.iter_bytes()
            data = [next(parts)]  # in flight: the next two listen to it
            with slow.stream("POST", url + "/v1/audio/speech", json=body) as late:
                assert late.headers["x-cache"] == "shared"
                second = b.post(url + "/v1/audio/speech", json={**body, "priority": "navigation"})
                data += list(parts)  # the slow client has read nothing yet: nobody waited for it
                assert second.headers["x-cache"] == "shared"
                late_data = late.read()
    oracle = alone(bundle, SENTENCE, "fr_female", 31, 60)
    assert b"".join(data) == second.content == late_data == oracle  # each from the start, whole
    after = metrics(url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta[("voxtral_syntheses_total", ())] == 1 and delta[("voxtral_shared_total", ())] == 2
    assert delta[("voxtral_requests_total", (("class", "media"), ("status", "200")))] == 2
    assert delta[("voxtral_requests_total", (("class", "navigation"), ("status", "200")))] == 1
    job = service.scheduler.finished[-1]
    assert job.priority == "navigation" and job.frames == 60  # it rose to its highest listener's class


def test_a_deadline_that_cannot_be_met_is_a_504_and_costs_no_frame(server):
    url, service = server
    scheduler = service.scheduler
    long_nav = {"input": LONG, "voice": "casual_male", "priority": "navigation", "max_frames": 2000, "seed": 8}
    with httpx.Client(timeout=60) as http, http.stream("POST", url + "/v1/audio/speech", json=long_nav) as nav:
        parts = nav.iter_bytes()
        next(parts)
        late = http.post(url + "/v1/audio/speech", json={"input": "Message for you.", "voice": "casual_male",
                                                         "priority": "message", "deadline_ms": 300, "seed": 9})
    assert late.status_code == 504
    error = late.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("server_error", "deadline_exceeded", None)
    assert "message request" in error["message"] and "deadline" in error["message"]
    wait_for(lambda: scheduler.current is None or scheduler.current.state != "running", what="the worker to idle")
    dropped = [j for j in scheduler.finished if j.priority == "message"][-1]
    assert dropped.state == "expired" and dropped.frames == 0
    bad = speech(url, {"input": "Hi", "voice": "casual_male", "deadline_ms": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "deadline_ms"


def test_a_client_that_leaves_while_queued_or_shared_stops_costing_compute(server):
    url, service = server
    scheduler = service.scheduler
    counters = dict(scheduler.counters)
    media = {"input": SENTENCE, "voice": "casual_male", "priority": "media", "max_frames": 2000, "seed": 12}
    with ExitStack() as sharing, httpx.Client(timeout=60) as http:
        with http.stream("POST", url + "/v1/audio/speech", json=media) as first:
            parts = first.iter_bytes()
            next(parts)
            with raw_request(url, {**media, "seed": 13}):  # behind it in its class, then gone
                wait_for(lambda: scheduler.queued()["media"] == 2, what="the second request to queue")
            wait_for(lambda: scheduler.counters["cancelled"] == counters["cancelled"] + 1, what="the queued job to go")
            queued_job = scheduler.finished[-1]
            assert queued_job.state == "cancelled" and queued_job.frames == 0 and queued_job.first_audio_step is None
            # a second listener joins the running synthesis; then the first leaves: it goes on for the second
            sharing.enter_context(raw_request(url, media))
            wait_for(lambda: scheduler.counters["joined"] == counters["joined"] + 1, what="the listener to join")
            job = scheduler.current
        steps = scheduler.counters["steps"]
        wait_for(lambda: scheduler.counters["steps"] > steps + 8, what="the shared synthesis to go on")
        assert job.active and len(job.listeners) == 1
    # the last listener has gone: the synthesis stops within a frame
    wait_for(lambda: not job.active, what="the shared job to be dropped")
    assert job.state == "cancelled" and job.closed_step - job.cancel_step <= 1 and job.frames < 2000
    wait_for(lambda: scheduler.idle, what="the worker to wait for work")


def test_a_memory_error_in_a_step_is_a_503_and_the_worker_goes_on(server, monkeypatch):
    url, service = server
    step_many = service.synth.step_many
    failures = []

    def failing_step(us):  # the allocation the kernel refuses under RLIMIT_AS (see test_serve_faults)
        if not failures:
            failures.append(us)
            raise MemoryError
        return step_many(us)
    monkeypatch.setattr(service.synth, "step_many", failing_step)
    refused = speech(url, {"input": "Turn left.", "voice": "casual_male", "max_frames": 3, "seed": 40})
    served = speech(url, {"input": "Turn left.", "voice": "casual_male", "max_frames": 3, "seed": 40})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "memory_low"
    assert refused.headers["retry-after"] == "1" and service.scheduler.finished[-2].state == "failed"
    assert served.status_code == 200 and served.content[44:] == alone(service.config.bundle, "Turn left.",
                                                                      "casual_male", 40, 3)


def test_metrics_in_prometheus_text_format_behind_the_api_key(bundle):
    with running(ServiceConfig(bundle=bundle, cache_dir=None, api_key="k3y")) as (url, server):
        assert httpx.get(url + "/metrics").status_code == 401
        auth = {"Authorization": "Bearer k3y"}
        assert speech(url, {"input": "Turn right.", "voice": "casual_male", "priority": "navigation",
                            "max_frames": 5}, headers=auth).status_code == 200
        assert speech(url, {"input": "Hi", "voice": "nobody"}, headers=auth).status_code == 400
        m = metrics(url, headers=auth)
    names = {name for name, _ in m}
    assert {"voxtral_requests_total", "voxtral_syntheses_total", "voxtral_cache_hits_total",
            "voxtral_preemptions_total", "voxtral_queue_depth", "voxtral_first_audio_seconds_bucket",
            "voxtral_realtime_factor_bucket"} <= names
    assert m[("voxtral_requests_total", (("class", "navigation"), ("status", "200")))] == 1
    assert m[("voxtral_requests_total", (("class", "unknown"), ("status", "400")))] == 1
    assert m[("voxtral_syntheses_total", ())] == 1 and m[("voxtral_realtime_factor_count", ())] == 1
    assert m[("voxtral_first_audio_seconds_count", (("class", "navigation"),))] == 1
    assert {labels for name, labels in m if name == "voxtral_queue_depth"} == {
        (("class", p),) for p in ("navigation", "assistant", "message", "media", "background")}


def test_the_worker_out_of_work_gives_the_heaps_free_pages_back_once_per_burst(bundle, monkeypatch):
    """malloc_trim runs when the worker has no job, after steps were made (never twice for one burst, never
    before the first), without the scheduler's lock held; /metrics counts it."""
    import voxtral_edge.serve.scheduler as scheduler_module

    calls = []
    monkeypatch.setattr(scheduler_module, "TRIM_INTERVAL_S", 0.0)
    with running(ServiceConfig(bundle=bundle, cache_dir=None)) as (url, server):
        scheduler = server.service.scheduler

        def probe():  # another thread tries the scheduler's lock while the worker trims
            free = []
            def attempt():
                free.append(scheduler._wake.acquire(blocking=False))
                if free[0]:
                    scheduler._wake.release()
            other = threading.Thread(target=attempt)
            other.start()
            other.join()
            calls.append(free[0])

        monkeypatch.setattr(scheduler_module, "trim_heap", probe)
        assert calls == [] and metrics(url)[("voxtral_heap_trims_total", ())] == 0
        for n in (1, 2):
            assert speech(url, {"input": SENTENCE, "voice": "casual_male", "max_frames": 3}).status_code == 200
            wait_for(lambda: scheduler.idle and len(calls) == n)
            assert metrics(url)[("voxtral_heap_trims_total", ())] == n
        assert len(calls) == 2  # no steps since: no more trims however long the worker waits
    assert calls == [True, True]  # the lock was free at each trim: requests are taken meanwhile
