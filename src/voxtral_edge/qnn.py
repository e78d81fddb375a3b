"""Qualcomm's Hexagon NPU (HTP) through onnxruntime's QNN execution provider, a plugin in the `[qnn]` extra
(`pip install 'voxtral-edge[qnn]'`: onnxruntime-qnn). On x86_64 its HTP backend simulates the NPU on the
CPU, so the graphs a car will run are built, compiled and checked here; only their speed is not the car's.

    SOCS                       the SoCs we compile for: HTP architecture and QNN soc_model, with sources
    qnn_version()              the QNN SDK the installed onnxruntime-qnn was built with (None: not installed)
    create_qnn_session(...)    a session whose every node runs on the HTP (CPU fallback disabled), or a
                               QnnRefusal naming the op types and nodes that block it; with allow_fallback,
                               the session and the nodes that went to the CPU
    compile_graph(...)         write an EP context model (the precompiled HTP binary) for a SoC
    check_compiled(...)        refuse a compiled graph made for another SoC or QNN version, before opening it

Used by `voxtral_edge.sessions`; nothing else talks to the EP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .errors import BundleError, UsageError

EP_NAME = "QNNExecutionProvider"


@dataclass(frozen=True)
class Soc:
    name: str
    htp_arch: int
    soc_model: int | None  # QNN's soc_model id; None where no public table gives it
    source: str


# From QnnTypes.h (QNN_SOC_MODEL_*), executorch backends/qualcomm/serialization/qc_schema.py and Qualcomm's
# "Auto Platform Overview" of the AI Engine Direct SDK (docs.qualcomm.com/doc/80-63442-10/topic/auto_overview.html).
SOCS = {
    "sa8295p": Soc("sa8295p", 68, 39, "QnnTypes.h QNN_SOC_MODEL_SA8295 = 39; executorch qc_schema.py 'SA8295 = 39 # v68'"),
    "sa8255p": Soc("sa8255p", 73, 52, "QnnTypes.h QNN_SOC_MODEL_SA8255 = 52; Qualcomm Auto Platform Overview: "
                                      "SA8650 platform, related SA8775 and SA8255, HTP v73"),
    "sa8775p": Soc("sa8775p", 73, None, "Qualcomm Auto Platform Overview: SA8650 platform, related SA8775 and "
                                        "SA8255, HTP v73 (no soc_model id in QnnTypes.h)"),
    "x-elite": Soc("x-elite", 73, 60, "QnnTypes.h QNN_SOC_MODEL_SC8380XP = 60 (Snapdragon X Elite), HTP v73"),
    "8-elite": Soc("8-elite", 79, 69, "QnnTypes.h QNN_SOC_MODEL_SM8750 = 69; executorch qc_schema.py "
                                      "'SM8750 = 69  # v79' (Snapdragon 8 Elite)"),
}


def soc(name: str) -> Soc:
    if name not in SOCS:
        raise UsageError(f"SoC {name!r}: expected one of {', '.join(SOCS)}")
    return SOCS[name]


def qnn_version() -> str | None:
    """The QNN SDK version onnxruntime-qnn was built with ('2.51.0'), None when it is not installed."""
    try:
        from onnxruntime_qnn import build_and_package_info
    except ImportError:
        return None
    return str(build_and_package_info.qnn_version)


def _devices() -> list:
    try:
        import onnxruntime_qnn
    except ImportError:
        raise UsageError("the QNN execution provider is not installed: pip install 'voxtral-edge[qnn]' "
                         "(onnxruntime-qnn)") from None
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
        devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise UsageError(f"onnxruntime-qnn is installed but onnxruntime {ort.__version__} lists no {EP_NAME} device")
    return devices


def add_qnn(options: ort.SessionOptions, target: Soc | None, allow_fallback: bool = False) -> ort.SessionOptions:
    """Put the QNN EP's HTP backend on `options` (for `target`'s HTP architecture when given)."""
    import onnxruntime_qnn

    provider = {"backend_path": onnxruntime_qnn.get_qnn_htp_path()}
    if target is not None:
        provider["htp_arch"] = str(target.htp_arch)
        if target.soc_model is not None:
            provider["soc_model"] = str(target.soc_model)
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if allow_fallback else "1")
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    options.add_provider_for_devices(_devices(), provider)
    return options


class QnnRefusal(BundleError):
    """A graph the HTP cannot run whole; `blockers` lists (op type, node name)."""

    def __init__(self, path: Path, blockers: list[tuple[str, str]], reason: str):
        self.blockers = blockers
        types = sorted({op for op, _ in blockers})
        names = ", ".join(n for _, n in blockers[:12]) + (f" and {len(blockers) - 12} more" if len(blockers) > 12 else "")
        if not blockers:  # no node is to blame: the graph as a whole (its size, its memory) failed
            super().__init__(f"{path}: the NPU (QNN HTP) cannot build this graph: {reason}")
            return
        super().__init__(f"{path}: the NPU (QNN HTP) cannot run this graph whole: {len(blockers)} node(s) of type "
                         f"{', '.join(types)} ({names}) {reason}. Export it for the NPU (--plan w8a16 or "
                         f"w4a16), run this graph on the CPU (--ep qnn:GRAPHS naming the others), or pass "
                         f"--allow-fallback to run those nodes on the CPU")


_UNSUPPORTED = re.compile(r"\{ name: ([^,]+), type: ([^ }]+) \}")
_COMPOSE = re.compile(r"failed for node `([^`]+)` of type `([^`]+)`")


def create_qnn_session(path: str | Path, options: ort.SessionOptions, target: Soc | None, allow_fallback: bool = False
                       ) -> tuple[ort.InferenceSession, list[tuple[str, str]]]:
    """(the session, the (op type, name) of the nodes that run on the CPU: none unless allow_fallback).
    Raises QnnRefusal naming the blocking nodes when the HTP cannot take the graph whole."""
    add_qnn(options, target, allow_fallback)
    messages: list[str] = []
    ort.set_default_logger_callback(lambda severity, category, logid, where, message: messages.append(message), 3)
    try:
        session = ort.InferenceSession(str(path), options)
    except Exception as e:  # onnxruntime's own types; the blocking nodes are only named in its log
        blockers = [(op, name) for m in messages for name, op in _UNSUPPORTED.findall(m)]
        composed = [(op, name) for m in messages for name, op in _COMPOSE.findall(m)]
        blockers = list(dict.fromkeys(blockers + composed))
        reason = "failed to build on the HTP" if composed else "are not supported there"
        detail = str(e).splitlines()[0][:240]
        raise QnnRefusal(Path(path), blockers, f"{reason}; onnxruntime: {detail}" if blockers else detail) from None
    finally:
        ort.set_default_logger_callback(None)
        ort.set_default_logger_severity(2)  # onnxruntime's default
    on_cpu = [(n.op_type, n.name) for sub in session.get_provider_graph_assignment_info() if sub.ep_name != EP_NAME
              for n in sub.get_nodes()]
    return session, on_cpu


def detect_soc() -> Soc | None:
    """The SoC this machine is, from Linux's /sys/devices/soc0/machine (Qualcomm kernels name it, e.g.
    "SA8295P"); None elsewhere (an x86 host, where the HTP is simulated)."""
    try:
        machine = Path("/sys/devices/soc0/machine").read_text(encoding="ascii", errors="replace").strip().lower()
    except OSError:
        return None
    return next((s for name, s in SOCS.items() if name.rstrip("p") in machine.replace("-", "")), None)


def compile_graph(path: Path, out: Path, target: Soc) -> None:
    """Write `out` (an EP context model, `<out stem>_qnn.bin` beside it) compiled for `target`'s HTP."""
    options = ort.SessionOptions()
    options.add_session_config_entry("ep.context_enable", "1")
    options.add_session_config_entry("ep.context_file_path", str(out))
    options.add_session_config_entry("ep.context_embed_mode", "0")
    create_qnn_session(path, options, target)


def check_compiled(graph_file: Path, compiled: dict, target: Soc | None) -> None:
    """Refuse, before onnxruntime opens it, a graph compiled for another SoC or QNN SDK than this run's (a
    context from a newer QNN fails inside onnxruntime with an unhelpful message; one for another HTP is
    not caught by the simulator at all)."""
    installed = qnn_version()
    if installed is None:
        raise UsageError(f"{graph_file}: compiled for the NPU (QNN {compiled['qnn_version']}, {compiled['soc']}); "
                         f"install onnxruntime-qnn (pip install 'voxtral-edge[qnn]')")
    if target is not None and target.name != compiled["soc"]:
        raise BundleError(f"{graph_file}: compiled for {compiled['soc']} (HTP v{compiled['htp_arch']}), but this run is "
                          f"for {target.name} (HTP v{target.htp_arch}); compile the bundle for {target.name}: "
                          f"voxtral-edge compile --bundle SOURCE --soc {target.name} --out DIR")
    if installed != compiled["qnn_version"]:
        raise BundleError(f"{graph_file}: compiled with QNN {compiled['qnn_version']} (onnxruntime-qnn "
                          f"{compiled['onnxruntime_qnn']}), but QNN {installed} is installed; install "
                          f"onnxruntime-qnn=={compiled['onnxruntime_qnn']} or compile the bundle again with this one")


def compile_bundle(bundle: str | Path, soc_name: str, out: str | Path, *, force: bool = False,
                   progress: bool = True) -> dict[str, dict]:
    """Copy a bundle with its graphs in the NPU form compiled ahead for `soc_name`'s HTP: each becomes an EP
    context model (`<graph>.onnx`, one EPContext node) and its binary (`<graph>_qnn.bin`), which the head unit
    opens without compiling. The manifest records the SoC, its HTP and the QNN version of each; the runtime
    refuses them on another SoC or QNN version. Returns {graph: {"seconds", "context_bytes"}}."""
    import json
    import shutil
    import time

    import onnxruntime_qnn

    from .files import replacing_folder
    from .manifest import Manifest, file_entry, graph_units, write_manifest
    from .onnxfile import ep_context_nodes
    from .progress import Progress

    target = soc(soc_name)
    manifest = Manifest.load(bundle)
    npu = [g for g, e in manifest["graphs"].items() if "htp" in e]
    if not npu:
        raise UsageError(f"{manifest.bundle}: no graph in the NPU form to compile (export it with --plan w8a16, "
                         f"w4a16 or int4-w8a16)")
    if any("compiled" in u for g in npu for u in graph_units(manifest["graphs"][g])):
        raise UsageError(f"{manifest.bundle}: already compiled; compile the bundle it was made from")
    data = json.loads(json.dumps(manifest.data))
    report = {}
    bar = Progress(f"compiling {Path(out).name} for {target.name}", len(npu), unit="graph", enabled=progress)
    with replacing_folder(out, force) as tmp:
        compiled_files = set()
        for name in npu:
            entry = data["graphs"][name]
            start, context_bytes = time.perf_counter(), 0
            for unit in graph_units(entry):  # the graph, or each part of a backbone in parts
                compile_graph(manifest.path(unit["file"]), tmp / unit["file"], target)
                context = f"{Path(unit['file']).stem}_qnn.bin"
                nodes = ep_context_nodes(tmp / unit["file"])
                if [n.get("ep_cache_context") for n in nodes] != [context]:
                    raise BundleError(f"{tmp / unit['file']}: expected one EPContext node naming {context}, found "
                                      f"{[n.get('ep_cache_context') for n in nodes]}")
                for f in (unit["file"], unit.get("data")):
                    if f:
                        data["files"].pop(f, None)
                        compiled_files.add(f)
                unit.update(data=None, compiled={
                    "soc": target.name, "htp_arch": target.htp_arch, "soc_model": target.soc_model,
                    "qnn_version": qnn_version(), "onnxruntime_qnn": onnxruntime_qnn.__version__,
                    "ep_sdk_version": nodes[0].get("ep_sdk_version"), "context": context, "from": manifest.bundle.name})
                data["files"][unit["file"]] = file_entry(tmp / unit["file"])
                data["files"][context] = file_entry(tmp / context)
                context_bytes += (tmp / context).stat().st_size
            first = graph_units(entry)[0]
            entry.update(data=None, compiled=first["compiled"])
            report[name] = {"seconds": time.perf_counter() - start, "context_bytes": context_bytes,
                            "parts": len(graph_units(entry))}
            bar.advance(1, name)
        for f in manifest["files"]:
            if f not in compiled_files:
                (tmp / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(manifest.path(f), tmp / f)
        data["compiled"] = {"soc": target.name, "htp_arch": target.htp_arch, "qnn_version": qnn_version()}
        write_manifest(tmp, data)
        bar.finish()
    return report
