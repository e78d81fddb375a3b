"""What quantization costs: a candidate bundle measured against a reference (fp32) bundle.

Per graph, on the same inputs: cosine similarity and max error of the outputs. End to end, with the
same injected noise over several sentences:
  teacher-forced  the candidate runs frame by frame on the reference's codes, so each frame's error is
                  the quantization's alone: semantic-code agreement, acoustic codes exact / within 1 step;
  free-running    each bundle feeds back its own codes: agreement until the first divergence, waveform
                  SNR and log-mel distance. Once the codes diverge the two utterances differ (with random
                  weights, the dynamics are chaotic): the teacher-forced figures are the meaningful ones.
Plus bundle sizes and ms per frame per graph for both.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .. import defaults
from ..errors import VoxtralEdgeError
from ..runtime import Synthesizer

SENTENCES = [
    "Turn left in two hundred metres, then keep right.",
    "Le prochain arrêt est la gare centrale.",
    "Die Batterie ist zu achtzig Prozent geladen.",
    "La temperatura esterna è di diciotto gradi.",
]


def compare(candidate: np.ndarray, reference: np.ndarray) -> dict:
    """Cosine similarity, max abs error, and max error relative to the reference's scale."""
    a, b = np.asarray(candidate, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    finite = np.isfinite(b) & np.isfinite(a)
    a, b = a[finite], b[finite]
    cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    err = float(np.abs(a - b).max()) if len(a) else 0.0
    return {"cosine": cosine, "max_abs_error": err, "max_rel_error": err / max(float(np.abs(b).max()), 1e-30)}


def snr_db(candidate: np.ndarray, reference: np.ndarray) -> float:
    n = min(len(candidate), len(reference))
    noise = np.sum((candidate[:n].astype(np.float64) - reference[:n]) ** 2)
    return float("inf") if noise == 0 else float(10 * math.log10(np.sum(reference[:n].astype(np.float64) ** 2) / noise))


def log_mel(audio: np.ndarray, sample_rate: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 80) -> np.ndarray:
    """Log-mel power spectrogram in dB [frames, n_mels] (Hann window, HTK mel scale)."""
    audio = np.pad(np.asarray(audio, np.float64), (0, max(0, n_fft - len(audio))))
    count = 1 + (len(audio) - n_fft) // hop
    frames = np.stack([audio[i * hop: i * hop + n_fft] for i in range(count)]) * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = np.linspace(0, 2595 * math.log10(1 + sample_rate / 2 / 700), n_mels + 2)
    bins = np.floor((n_fft + 1) * 700 * (10 ** (mel / 2595) - 1) / sample_rate).astype(int)
    bank = np.zeros((n_mels, power.shape[1]))
    for m in range(1, n_mels + 1):
        left, center, right = bins[m - 1], bins[m], bins[m + 1]
        bank[m - 1, left:center] = (np.arange(left, center) - left) / max(center - left, 1)
        bank[m - 1, center:right] = (right - np.arange(center, right)) / max(right - center, 1)
    return 10 * np.log10(np.maximum(power @ bank.T, 1e-10))


def log_mel_distance(candidate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """Mean absolute difference of the log-mel spectrograms, in dB."""
    n = min(len(candidate), len(reference))
    if n == 0:
        return 0.0
    return float(np.mean(np.abs(log_mel(candidate[:n], sample_rate) - log_mel(reference[:n], sample_rate))))


def _bundle_bytes(synth: Synthesizer) -> dict:
    files = synth.manifest["files"]
    sizes = {g: sum(files[f]["size"] for f in (e["file"], e.get("data")) if f) for g, e in synth.manifest["graphs"].items()}
    sizes["total"] = sum(e["size"] for e in files.values())
    return sizes


def _agreement(predicted: np.ndarray, codes: np.ndarray) -> dict:
    """How far teacher-forced predictions agree with the codes they were forced on."""
    n, acoustic = max(len(codes), 1), max(len(codes), 1) * (codes.shape[1] - 1)
    return {"semantic_agreement": float(np.sum(predicted[:, 0] == codes[:, 0])) / n,
            "acoustic_exact": float(np.sum(predicted[:, 1:] == codes[:, 1:])) / acoustic,
            "acoustic_within_1": float(np.sum(np.abs(predicted[:, 1:] - codes[:, 1:]) <= 1)) / acoustic}


def quality_report(reference: str | Path, candidate: str | Path, *, sentences: list[str] | None = None,
                   voice: str | None = None, frames: int = 40, steps: int | None = None,
                   cfg_alpha: float = defaults.CFG_ALPHA,
                   seed: int = 0, threads: int | None = None, providers: tuple[str, ...] = ("cpu",),
                   allow_fallback: bool = False, soc: str | None = None) -> dict:
    """Measure `candidate` against `reference` (two bundles of the same model); returns the report dict.
    The reference runs on the CPU; the candidate on `providers` (`qnn`: Qualcomm's NPU, here simulated)."""
    ref = Synthesizer.open(reference, threads=threads)
    cand = Synthesizer.open(candidate, threads=threads, providers=providers, allow_fallback=allow_fallback, soc=soc)
    def dims(m):  # the model, whatever KV length each bundle was exported with
        return {**m["model"], "backbone": {k: v for k, v in m["model"]["backbone"].items() if k != "max_context"}}

    if dims(ref.manifest) != dims(cand.manifest) or ref.manifest["audio"] != cand.manifest["audio"]:
        raise VoxtralEdgeError(f"{candidate}: not the same model as {reference} (dimensions or audio layout differ)")
    voice = voice or sorted(ref.voices)[0]
    steps = ref.manifest["model"]["flow_head"]["n_decoding_steps"] if steps is None else steps
    sentences = sentences or SENTENCES
    n_acoustic = ref.audio_layout["n_acoustic_codebook"]
    rng = np.random.default_rng(seed)

    # per graph, the same inputs through both
    x = ref.prompt_embeddings(ref.prompt(sentences[0], voice), voice)
    (h_ref, logits_ref), (h_cand, logits_cand) = ref.backbone(x, 0), cand.backbone(x, 0)
    flow_noise = rng.standard_normal((4, n_acoustic)).astype(np.float32)

    def latents(synth: Synthesizer) -> np.ndarray:  # a frame's x at t = 1, before rounding to codes
        return np.stack([synth.flow_latent(h_ref[-1], n, steps, cfg_alpha) for n in flow_noise])

    utterances, first_codes = [], None
    for i, text in enumerate(sentences):
        noise = np.random.default_rng(seed + 1 + i).standard_normal((frames, n_acoustic)).astype(np.float32)
        r = ref.synthesize(text, voice, noise=noise, steps=steps, cfg_alpha=cfg_alpha)
        c = cand.synthesize(text, voice, noise=noise, steps=steps, cfg_alpha=cfg_alpha)
        first_codes = r.codes if first_codes is None else first_codes
        n = min(len(r.codes), len(c.codes))
        same = np.all(r.codes[:n] == c.codes[:n], axis=1)
        utterances.append({
            "text": text, "frames": [len(r.codes), len(c.codes)],
            "teacher_forced": _agreement(cand.teacher_forced(r.spoken_text, voice, r.codes, noise, steps=steps,
                                                             cfg_alpha=cfg_alpha), r.codes),
            "free_running": {"frames_identical_before_divergence": int(np.argmin(same)) if not same.all() else n,
                             "semantic_agreement": float(np.mean(r.codes[:n, 0] == c.codes[:n, 0])) if n else 1.0,
                             "waveform_snr_db": snr_db(c.audio, r.audio),
                             "log_mel_distance_db": log_mel_distance(c.audio, r.audio, ref.sample_rate)},
            "ms_per_frame": {name: {k: s.timings[f"{k}_ms"] / max(len(s.codes), 1) for k in ("backbone", "flow", "codec")}
                             for name, s in (("reference", r), ("candidate", c))},
        })
    codec_ref, codec_cand = ref.decode(first_codes), cand.decode(first_codes)
    codec = compare(codec_cand, codec_ref)
    codec.update(snr_db=snr_db(codec_cand, codec_ref), log_mel_distance_db=log_mel_distance(codec_cand, codec_ref,
                                                                                           ref.sample_rate))
    mean = lambda key, sub: float(np.mean([u[key][sub] for u in utterances]))  # noqa: E731
    return {
        "reference": {"bundle": str(reference), "quantization": ref.manifest["quantization"]},
        "candidate": {"bundle": str(candidate), "quantization": cand.manifest["quantization"],
                      "providers": list(providers)},
        "settings": {"voice": voice, "frames": frames, "steps": steps, "cfg_alpha": cfg_alpha, "seed": seed},
        "graphs": {
            "backbone_step": {"hidden_states": compare(h_cand, h_ref), "semantic_logits": compare(logits_cand, logits_ref)},
            "flow_head": compare(latents(cand), latents(ref)),
            "codec_decoder": codec,
        },
        "end_to_end": {"utterances": utterances,
                       "mean": {"teacher_forced_semantic_agreement": mean("teacher_forced", "semantic_agreement"),
                                "teacher_forced_acoustic_exact": mean("teacher_forced", "acoustic_exact"),
                                "teacher_forced_acoustic_within_1": mean("teacher_forced", "acoustic_within_1"),
                                "free_running_semantic_agreement": mean("free_running", "semantic_agreement"),
                                "free_running_waveform_snr_db": mean("free_running", "waveform_snr_db"),
                                "free_running_log_mel_distance_db": mean("free_running", "log_mel_distance_db")}},
        "bundle_bytes": {"reference": _bundle_bytes(ref), "candidate": _bundle_bytes(cand)},
    }


def to_markdown(report: dict) -> str:
    g, e = report["graphs"], report["end_to_end"]
    ref_plan, cand_plan = report["reference"]["quantization"]["plan"], report["candidate"]["quantization"]["plan"]
    lines = [f"# Quality: {cand_plan} against {ref_plan}", "",
             f"reference `{report['reference']['bundle']}`, candidate `{report['candidate']['bundle']}` on "
             f"{', '.join(report['candidate'].get('providers', ['cpu']))}; "
             f"voice {report['settings']['voice']}, {report['settings']['frames']} frames, "
             f"{report['settings']['steps']} Euler steps, cfg {report['settings']['cfg_alpha']}", "",
             "## Per graph, same inputs", "", "| output | cosine | max abs error | max error / scale |",
             "| --- | --- | --- | --- |"]
    rows = [("backbone hidden states", g["backbone_step"]["hidden_states"]),
            ("semantic logits", g["backbone_step"]["semantic_logits"]), ("flow head latent (a frame, same h)", g["flow_head"]),
            ("codec audio (same codes)", g["codec_decoder"])]
    lines += [f"| {name} | {r['cosine']:.6f} | {r['max_abs_error']:.3g} | {r['max_rel_error']:.3g} |" for name, r in rows]
    lines += ["", f"Codec on the same codes: SNR {g['codec_decoder']['snr_db']:.1f} dB, log-mel distance "
                  f"{g['codec_decoder']['log_mel_distance_db']:.2f} dB.", "",
              "## End to end, same noise", "",
              "| sentence | teacher-forced semantic | acoustic exact | acoustic within 1 | identical frames "
              "(free-running) | SNR dB | log-mel dB |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for u in e["utterances"]:
        t, f = u["teacher_forced"], u["free_running"]
        lines.append(f"| {u['text'][:40]} | {t['semantic_agreement']:.1%} | {t['acoustic_exact']:.1%} | "
                     f"{t['acoustic_within_1']:.1%} | {f['frames_identical_before_divergence']} / {u['frames'][0]} | "
                     f"{f['waveform_snr_db']:.1f} | {f['log_mel_distance_db']:.2f} |")
    m = e["mean"]
    lines += [f"| **mean** | {m['teacher_forced_semantic_agreement']:.1%} | {m['teacher_forced_acoustic_exact']:.1%} | "
              f"{m['teacher_forced_acoustic_within_1']:.1%} | | {m['free_running_waveform_snr_db']:.1f} | "
              f"{m['free_running_log_mel_distance_db']:.2f} |", "",
              "Teacher-forced: the candidate predicts each frame from the reference's history, so these figures "
              "are the quantization's own error per frame. Free-running: each bundle follows its own codes; "
              "after the first differing code the utterances diverge (with random weights the dynamics are "
              "chaotic), so SNR and log-mel distance then compare two different utterances.", "",
              "## Size and speed", "", "| | reference | candidate |", "| --- | --- | --- |"]
    b = report["bundle_bytes"]
    for key in ("backbone_step", "flow_head", "codec_decoder", "total"):
        lines.append(f"| {key} MB | {b['reference'][key] / 1e6:.1f} | {b['candidate'][key] / 1e6:.1f} |")
    speed = e["utterances"][0]["ms_per_frame"]
    for key in ("backbone", "flow", "codec"):
        lines.append(f"| {key} ms/frame | {speed['reference'][key]:.2f} | {speed['candidate'][key]:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """Write OUT.md and OUT.json (atomically); returns both paths."""
    out = Path(out)
    paths = (out.with_suffix(".md"), out.with_suffix(".json"))
    for path, text in zip(paths, (to_markdown(report), json.dumps(report, indent=2) + "\n")):
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths
