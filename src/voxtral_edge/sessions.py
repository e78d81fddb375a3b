"""Every onnxruntime session the runtime uses is made here: options, threads, execution providers and
this machine's saved optimized graphs. The runtime asks for "the bundle's graphs with these settings"
and never branches on a provider in its frame loop.

    SessionSettings(threads, codec_threads, providers, saved_graphs, profiling, allow_fallback, soc, record,
                    release_mapped, parallel_open)
    open_sessions(manifest, settings)  -> {graph: InferenceSession}, each checked against the manifest
    nodes_on_cpu(session)              the nodes of an NPU session that run on the CPU (--allow-fallback)
    create_session(path, options, providers)   one graph file (also for the benchmarks' own graphs)
    session_options(threads)           the options every session starts from
    optimize_bundle(bundle, threads)   make (or check) this machine's saved graphs (`voxtral-edge optimize`)
    KERNELS                            this process's known-answer verdicts of the quantized kernels
                                       (`voxtral_edge.kernelcheck`): a graph whose kernel is wrong on this
                                       CPU opens with the session options of a fallback that passes, or not

Execution providers have short names (`PROVIDERS`): the runtime keeps its KV cache in host memory, so
only providers that compute in host memory, or whose graphs take the cache as input and return the new
rows (the NPU form), can run its graphs. `cpu` runs every graph; `qnn` (Qualcomm's NPU through the QNN
execution provider, `voxtral_edge.qnn`) runs all three graphs there, `qnn:flow,codec` only those named
(backbone, flow, codec), the others on the CPU. On the NPU every node must run there (CPU fallback
disabled): a graph that cannot is refused naming the nodes that block it, unless `allow_fallback`.
A profile or caller that names a provider the runtime cannot use is refused with the reason, before any
session is made.

Footprint. Creating a session costs memory twice over for a moment: onnxruntime maps the graph's data
file, reads each quantized weight and packs it into the layout its kernel reads (MatMulNBits,
DynamicQuantizeMatMul), and frees the original once packed; the peak resident memory of a process is
reached while it does that. So `open_sessions` makes the sessions in the order that keeps that peak low
(`OPEN_ORDER`: first the flow head, whose weights sit in a Loop body and are all held until the last is
packed, while the process is still small; the codec, whose packing holds little more than it keeps,
last), gives the C heap's free pages back after each, and, with `release_mapped` (the default), gives
back the pages of the data file that onnxruntime keeps mapped but no longer reads: MatMulNBits copies its
scales into the packed weight yet keeps the original scales mapped (0.37 GB at blocks of 32 for the
full-size backbone). Only clean file pages are dropped (the page cache keeps them; a later read maps
them back), so outputs cannot change. Figures: benchmarks/README.md, "Footprint".
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .errors import BundleError, UsageError, VoxtralEdgeError
from .kernelcheck import FALLBACK_KEYS, Family, KernelCheck, family_report, graph_families
from .machine import file_mappings, release_file_pages, trim_heap
from .manifest import GRAPHS, Manifest, graph_units
from .onnxfile import MalformedOnnx
from .optimized import cache_folders, forget_saved, keep_saved, opted_in, saved_graph, saving_options

# Short names -> onnxruntime's provider names, for the providers the runtime can run its graphs on.
PROVIDERS = {"cpu": "CPUExecutionProvider", "qnn": "QNNExecutionProvider"}
# The graphs' short names in `qnn:backbone,flow,codec`.
GRAPH_NAMES = {"backbone": "backbone_step", "flow": "flow_head", "codec": "codec_decoder"}
# The order sessions are made in: the peak resident memory of an open is lowest this way (see above).
OPEN_ORDER = ("flow_head", "backbone_step", "codec_decoder")
# With `parallel_open`, the graphs made on a second thread while the others are made in OPEN_ORDER.
BESIDE = ("codec_decoder",)
# One lock per data file, held while a session is made from it and its pages released: no other session
# of this process maps or unmaps that file meanwhile (see machine.release_file_pages).
_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def npu_graphs(providers: Sequence[str]) -> tuple[str, ...]:
    """The graphs `providers` put on the NPU: `qnn` all three, `qnn:flow,codec` those named; UsageError for
    an entry that is neither a provider nor qnn:GRAPHS."""
    graphs: list[str] = []
    for entry in providers:
        name, _, listed = entry.partition(":")
        if name not in PROVIDERS:
            raise UsageError(f"execution provider {entry!r}: the runtime runs its graphs on {', '.join(PROVIDERS)} "
                             f"(qnn:GRAPHS for some of {', '.join(GRAPH_NAMES)}, comma-separated)")
        if name != "qnn":
            if listed:
                raise UsageError(f"execution provider {entry!r}: only qnn takes a graph list")
            continue
        wanted = listed.split(",") if listed else list(GRAPH_NAMES)
        for short in wanted:
            if short not in GRAPH_NAMES:
                raise UsageError(f"execution provider {entry!r}: unknown graph {short!r} (expected "
                                 f"{', '.join(GRAPH_NAMES)})")
            graphs.append(GRAPH_NAMES[short])
    return tuple(g for g in GRAPHS if g in graphs)


def _file_lock(files: list[Path]) -> threading.Lock:
    key = "\0".join(sorted(str(f) for f in files))
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(key, threading.Lock())


@dataclass(frozen=True)
class SessionSettings:
    """How the sessions of a bundle are made.

    threads        intra-op threads of each graph's pool (None: onnxruntime's default, one per core)
    codec_threads  the codec's own (None: `threads`), for a codec that runs on cores of its own
    providers      execution providers by short name, in order of preference (see PROVIDERS)
    saved_graphs   this machine's saved optimized graphs: None uses them once `voxtral-edge optimize` made
                   them, True also makes them, False never touches them
    profiling      a path prefix: onnxruntime writes each session's per-node profile there (the file
                   names come back from `session.end_profiling()`); None: off
    allow_fallback let nodes the NPU cannot run go to the CPU (warned, counted by nodes_on_cpu) instead
                   of refusing the graph
    soc            the SoC this runs on (voxtral_edge.qnn.SOCS): graphs compiled for another are refused;
                   None: the one /sys/devices/soc0 names, if any
    record         a dict: every call of a graph in the NPU form appends its inputs to record[graph]
                   (the calibration of voxtral_edge.quant.htp); None: off
    release_mapped give back the data-file pages onnxruntime keeps mapped after packing (see above)
    parallel_open  make the codec's session (`BESIDE`) on a second thread while the others are made: a
                   shorter open on two cores or more, for a higher peak (the codec's memory is already
                   there when the backbone's packing peaks)
    memory_arena   onnxruntime's CPU memory arena (its default): each session keeps the chunks its runs
                   needed and reuses them, never giving one back, and the pages of a chunk become resident
                   as its free blocks are handed out; off, each run's tensors come from the C heap and go
                   back to it (the service: a process that runs for months, see `voxtral_edge.serve`)
    """

    threads: int | None = None
    codec_threads: int | None = None
    providers: tuple[str, ...] = ("cpu",)
    saved_graphs: bool | None = None
    profiling: str | None = None
    allow_fallback: bool = False
    soc: str | None = None
    record: dict | None = None
    release_mapped: bool = True
    parallel_open: bool = False
    memory_arena: bool = True

    def graph_threads(self, graph: str) -> int | None:
        return self.codec_threads if graph == "codec_decoder" and self.codec_threads else self.threads

    def options(self, graph: str, config: dict[str, str] | None = None) -> ort.SessionOptions:
        """`graph`'s session options, with `config` entries added (a kernel fallback's)."""
        options = session_options(self.graph_threads(graph))
        options.enable_cpu_mem_arena = self.memory_arena
        for key, value in (config or {}).items():
            options.add_session_config_entry(key, value)
        if self.profiling is not None:
            options.enable_profiling = True
            options.profile_file_prefix = f"{self.profiling}{graph}"
        return options


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The options of every session: `threads` for each graph's pool, no spinning."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    # three sessions take turns on the same cores: a pool left spin-waiting after its run steals
    # them from the next one (measured on 2 cores: backbone step 97 -> 71 ms, flow step 19 -> 14 ms)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def onnxruntime_providers(names: Sequence[str]) -> list[str]:
    """onnxruntime's names for `names` (short names, see PROVIDERS); UsageError for a provider the runtime
    cannot use or this onnxruntime does not have."""
    if not names:
        raise UsageError(f"no execution provider given; expected some of {', '.join(PROVIDERS)}")
    npu_graphs(names)  # every entry is valid
    names = [n for n in names if not n.startswith("qnn")] or ["cpu"]  # the NPU's sessions: voxtral_edge.qnn
    available = ort.get_available_providers()
    chosen = []
    for name in names:
        if name not in PROVIDERS:
            raise UsageError(f"execution provider {name!r}: the runtime runs its graphs on {', '.join(PROVIDERS)} "
                             f"(its KV cache lives in host memory and is bound in place, which other providers "
                             f"would copy every step)")
        if PROVIDERS[name] not in available:
            raise UsageError(f"execution provider {name!r} ({PROVIDERS[name]}) is not in this onnxruntime "
                             f"{ort.__version__} (it has {', '.join(available)})")
        chosen.append(PROVIDERS[name])
    return chosen


def create_session(model: str | Path | bytes, options: ort.SessionOptions | None = None,
                   providers: Sequence[str] = ("cpu",)) -> ort.InferenceSession:
    """A session for one graph file, or a serialized model (the one place onnxruntime sessions are created)."""
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                options if options is not None else session_options(),
                                providers=onnxruntime_providers(providers))


KERNELS = KernelCheck(create_session)


def _save(manifest: Manifest, name: str, settings: SessionSettings, folder: Path) -> ort.InferenceSession:
    """Create the session from the bundle's graph, having onnxruntime write the optimized graph and its
    packed weights into `folder` (raises OSError when it cannot)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".partial", dir=folder))
    try:
        session = create_session(manifest.path(manifest["graphs"][name]["file"]),
                                 saving_options(settings.options(name), name, tmp), settings.providers)
        keep_saved(manifest, name, tmp, folder)
        return session
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _npu_session(manifest: Manifest, graph: dict, name: str, settings: SessionSettings) -> ort.InferenceSession:
    """A graph (or one part of it) on the NPU: its compiled context when the bundle has one (refused if made
    for another SoC or QNN), else the graph itself, compiled as the session is created."""
    from . import qnn

    target = qnn.soc(settings.soc) if settings.soc else qnn.detect_soc()
    path = manifest.path(graph["file"])
    if "compiled" in graph:
        qnn.check_compiled(path, graph["compiled"], target)
        target = qnn.soc(graph["compiled"]["soc"])
    session, on_cpu = qnn.create_qnn_session(path, settings.options(name), target, settings.allow_fallback)
    if on_cpu:
        types = sorted({op for op, _ in on_cpu})
        warnings.warn(f"{path}: {len(on_cpu)} node(s) run on the CPU, not the NPU (--allow-fallback): "
                      f"{', '.join(types)}", stacklevel=4)
    return session


def nodes_on_cpu(session: ort.InferenceSession) -> list[tuple[str, str]]:
    """(op type, name) of a session's nodes that run on the CPU; [] for a session on the CPU, whose nodes
    all do (only NPU sessions record where their nodes went)."""
    if isinstance(session, PartedSession):
        return [node for part, _, _ in session.parts for node in nodes_on_cpu(part)]
    try:
        assigned = session.get_provider_graph_assignment_info()
    except Exception:  # a CPU session: not recorded
        return []
    return [(n.op_type, n.name) for sub in assigned if sub.ep_name == "CPUExecutionProvider" for n in sub.get_nodes()]


class RecordingSession:
    """A session that keeps a copy of every call's inputs (the calibration of the NPU plans)."""

    def __init__(self, session: ort.InferenceSession, calls: list):
        self.session, self.calls = session, calls

    def run(self, output_names, feeds, *args):
        self.calls.append({k: v.copy() for k, v in feeds.items()})
        return self.session.run(output_names, feeds, *args)

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()


class PartedSession:
    """A graph split into parts run one after the other (the NPU form of a backbone too large for one HTP
    graph): part k's hidden_out is part k+1's hidden_in; inputs and outputs are the whole graph's."""

    def __init__(self, parts: list[tuple[object, list[str], list[str]]]):
        self.parts = parts  # (session, its input names, its output names)

    def run(self, output_names, feeds, *args):
        results, hidden = {}, None
        for session, inputs, outputs in self.parts:
            out = session.run(outputs, {n: hidden if n == "hidden_in" else feeds[n] for n in inputs}, *args)
            results.update(zip(outputs, out))
            hidden = results.get("hidden_out")
        return [results[n] for n in output_names]

    def get_inputs(self):
        return [i for part, _, _ in self.parts for i in part.get_inputs() if i.name != "hidden_in"]

    def get_outputs(self):
        return [o for part, _, _ in self.parts for o in part.get_outputs() if o.name != "hidden_out"]


def load_session(manifest: Manifest, name: str, settings: SessionSettings,
                 config: dict[str, str] | None = None) -> ort.InferenceSession:
    """A session for one of the bundle's graphs: on the NPU when `settings` put it there (voxtral_edge.qnn);
    else from this machine's saved graph where `settings` allow (made again when it no longer matches the
    machine, the bundle or its own record), else from the bundle's graph. `config`: session config entries
    of a kernel fallback; such a session is made from the bundle's graph (a saved graph holds weights packed
    for the kernels the fallback avoids). A graph in parts gets a PartedSession."""
    graph = manifest["graphs"][name]
    units = graph_units(graph)
    on_npu = name in npu_graphs(settings.providers)
    for unit in units:
        if "compiled" in unit and not on_npu:
            raise UsageError(f"{manifest.path(unit['file'])}: compiled for the NPU ({unit['compiled']['soc']}); "
                             f"run it there: --ep qnn")
    if "htp" in graph:  # on the NPU, or on the CPU as it is (quantization simulated)
        sessions = []
        for k, unit in enumerate(units):
            session = _npu_session(manifest, unit, name, settings) if on_npu else \
                create_session(manifest.path(unit["file"]), settings.options(name), ("cpu",))
            if settings.record is not None:
                session = RecordingSession(session, settings.record.setdefault(
                    name if len(units) == 1 else f"{name}.part{k}", []))
            sessions.append(session)
        if len(units) == 1:
            return sessions[0]
        return PartedSession([(s, u["inputs"], u["outputs"]) for s, u in zip(sessions, units)])
    if on_npu:
        return _npu_session(manifest, graph, name, settings)
    plain = manifest.path(graph["file"])
    use_saved = opted_in(manifest, name) if settings.saved_graphs is None else settings.saved_graphs
    if config or not use_saved:
        return create_session(plain, settings.options(name, config), settings.providers)
    folders = cache_folders(manifest.bundle)
    for folder in folders:
        path = saved_graph(manifest, name, folder)
        if path is None:
            continue
        options = settings.options(name)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done when it was saved
        try:
            return create_session(path, options, settings.providers)
        except UsageError:
            raise
        except Exception as e:  # e.g. packed weights that no longer match what this onnxruntime makes
            warnings.warn(f"{path}: onnxruntime refused this saved graph ({str(e).splitlines()[0][:200]}); "
                          f"making it again", stacklevel=3)
            forget_saved(name, folder)
    problems = []
    for folder in folders:
        try:
            return _save(manifest, name, settings, folder)
        except OSError as e:
            problems.append(f"{folder}: {e.strerror or e}")
        except UsageError:
            raise
        except Exception as e:  # onnxruntime failed while writing (a full disk), or cannot load the graph at all
            problems.append(f"{folder}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
            break
    warnings.warn(f"cannot save the optimized {name} graph ({'; '.join(problems)}); every start will optimize it "
                  f"again", stacklevel=3)
    return create_session(plain, settings.options(name), settings.providers)


def graph_kernels(manifest: Manifest, name: str) -> tuple[Family, ...]:
    """The quantized kernel families one of the bundle's graphs uses (BundleError when unreadable)."""
    path = manifest.path(manifest["graphs"][name]["file"])
    try:
        return graph_families(path)
    except (MalformedOnnx, OSError) as e:
        raise BundleError(f"{path}: cannot read its nodes ({e})") from None


def kernel_config(manifest: Manifest, name: str, settings: SessionSettings) -> dict[str, str]:
    """The session config entries that `name`'s quantized kernels need on this CPU: {} when they all give
    the known answers with the bundle's options, else a fallback's (KernelError when none helps)."""
    families = graph_kernels(manifest, name)
    if not families:
        return {}
    threads = settings.graph_threads(name)
    return KERNELS.session_config(name, manifest.path(manifest["graphs"][name]["file"]), families,
                                  lambda: session_options(threads), threads, settings.providers)


def kernel_report(families: dict[Family, list[str]], threads: int | None = None,
                  providers: Sequence[str] = ("cpu",)) -> list[dict]:
    """`voxtral-edge doctor`'s verdicts: each family (-> the graphs using it) solved now with the session
    options a bundle's graph gets with `threads`, then with each fallback while it fails."""
    onnxruntime_providers(providers)
    return family_report(KERNELS, families, lambda: session_options(threads), threads, providers)


def bundle_kernels(manifest: Manifest) -> dict[Family, list[str]]:
    """The quantized kernel families of a bundle's graphs -> the graphs using each."""
    found: dict[Family, list[str]] = {}
    for name in manifest["graphs"]:
        for family in graph_kernels(manifest, name):
            found.setdefault(family, []).append(name)
    return found


def kernel_fallback(session: ort.InferenceSession) -> dict[str, str]:
    """The kernel fallback's config entries a session was made with ({} for none), read from the session."""
    options, found = session.get_session_options(), {}
    for key in FALLBACK_KEYS:
        try:
            found[key] = options.get_session_config_entry(key)
        except Exception:  # onnxruntime raises when the entry was never set
            pass
    return found


def data_files(manifest: Manifest, name: str) -> list[Path]:
    """The files a session of this graph may map: the bundle's data files (one per part of a graph in
    parts) and this machine's saved ones."""
    files = [manifest.path(unit["data"]) for unit in graph_units(manifest["graphs"][name]) if unit.get("data")]
    return files + [folder / f"{name}.onnx.data" for folder in cache_folders(manifest.bundle)]


def _lean_session(manifest: Manifest, name: str, settings: SessionSettings,
                  config: dict[str, str]) -> ort.InferenceSession:
    """`load_session`, then the footprint's clean-up: the pages of the data file this session mapped and
    no longer reads (`release_mapped`), the C heap's free pages."""
    if not settings.release_mapped:
        session = load_session(manifest, name, settings, config)
    else:
        files = data_files(manifest, name)
        with _file_lock(files):
            before = file_mappings(files)  # other sessions' mappings of the same files are left alone
            session = load_session(manifest, name, settings, config)
            release_file_pages(files, keep=before)
    trim_heap()
    return session


def open_sessions(manifest: Manifest, settings: SessionSettings = SessionSettings()) -> dict[str, ort.InferenceSession]:
    """One session per graph of the bundle (made in `OPEN_ORDER`, returned in the manifest's), each with
    the inputs and outputs its manifest lists (BundleError naming the file otherwise; UsageError for
    providers that cannot be used), each of its quantized kernels checked against known answers first
    (`kernel_config`; KernelError when wrong and no fallback helps). The checks all run before the first
    session is made, on this thread: a wrong kernel is refused before any weight is packed, and their
    small sessions come and go while the process is still small."""
    onnxruntime_providers(settings.providers)  # refused before any graph is read
    graphs = manifest["graphs"]
    order = sorted(graphs, key=lambda g: OPEN_ORDER.index(g) if g in OPEN_ORDER else -1)
    # the CPU's quantized kernels, checked unless the graph runs on the NPU or is in its form
    configs = {name: {} if name in npu_graphs(settings.providers) or "htp" in graphs[name] else
               kernel_config(manifest, name, settings) for name in order}
    beside = [g for g in order if g in BESIDE] if settings.parallel_open else []
    with ThreadPoolExecutor(1) if beside else nullcontext() as pool:
        later = {name: pool.submit(_checked_session, manifest, name, settings, configs[name]) for name in beside}
        made = {name: _checked_session(manifest, name, settings, configs[name]) for name in order if name not in later}
        made.update({name: future.result() for name, future in later.items()})
    return {name: made[name] for name in graphs}


def _checked_session(manifest: Manifest, name: str, settings: SessionSettings,
                     config: dict[str, str]) -> ort.InferenceSession:
    """The session of one graph (with a kernel fallback's `config` entries), with the inputs and outputs
    its manifest lists."""
    graph, path = manifest["graphs"][name], manifest.path(manifest["graphs"][name]["file"])
    try:
        session = _lean_session(manifest, name, settings, config)
    except VoxtralEdgeError:
        raise
    except Exception as e:  # onnxruntime raises its own types for a graph it cannot load
        raise BundleError(f"{path}: onnxruntime cannot load it ({e})") from None
    have = ({i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()})
    want = (set(graph["inputs"]), set(graph["outputs"]))
    if have != want:
        raise BundleError(f"{path}: inputs/outputs {sorted(have[0])} -> {sorted(have[1])} differ from the "
                          f"manifest's {sorted(want[0])} -> {sorted(want[1])}")
    return session


def optimize_bundle(bundle: str | Path, threads: int | None = None) -> dict[str, dict]:
    """Make (or check) this machine's saved graphs of a bundle; per graph: where, MB, seconds, made or reused."""
    manifest = Manifest.load(bundle)
    settings = SessionSettings(threads=threads, saved_graphs=True)
    report = {}
    for name in manifest["graphs"]:
        start = time.perf_counter()
        existing = next((p for f in cache_folders(manifest.bundle) if (p := saved_graph(manifest, name, f))), None)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a graph that cannot be saved is this command's failure
            try:
                load_session(manifest, name, settings)
            except UserWarning as w:
                raise VoxtralEdgeError(str(w)) from None
        path = next(p for f in cache_folders(manifest.bundle) if (p := saved_graph(manifest, name, f)))
        report[name] = {"path": str(path), "made": existing is None, "seconds": time.perf_counter() - start,
                        "mb": sum(q.stat().st_size for q in path.parent.glob(f"{name}.onnx*")) / 1e6}
    return report

