"""speech-dispatcher: a module configuration for its generic module (sd_generic), so that `spd-say`, Orca and
every speech-dispatcher client can speak with voxtral-edge; and `speak`, the command it runs for each message.

sd_generic runs `GenericExecuteSynth` through the shell for every message: the text on stdin, the voice,
language and rate as arguments, our WAV on stdout into the audio backend's player ($PLAY_COMMAND: paplay
for pulse, aplay for alsa). The command asks the running service first (`voxtral-edge serve`: the model is
already loaded there) and opens the bundle itself when no service answers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .errors import UsageError, VoxtralEdgeError
from .files import replace_file
from .text import LANGUAGES, voice_language

MODULE = "voxtral-edge"
SYSTEM_CONFIG = Path("/etc/speech-dispatcher/speechd.conf")
MODULES_DIRS = (Path("/usr/lib/speech-dispatcher-modules"), Path("/usr/local/lib/speech-dispatcher-modules"))
DEFAULT_SERVICE = "http://127.0.0.1:8000"
SPEECHD_SEED = 0  # a message always sounds the same (and the service's phrase cache can answer it)


def user_config_dir() -> Path:
    """Where speech-dispatcher reads a user's configuration: $XDG_CONFIG_HOME/speech-dispatcher."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "speech-dispatcher"


def voice_kinds(voices: list[str]) -> list[tuple[str, str, str]]:
    """(language, speech-dispatcher voice type, name) per voice: MALE1.., FEMALE1.. numbered per language."""
    counts: dict[tuple[str, str], int] = {}
    rows = []
    for name in sorted(voices):
        lang = voice_language(name)
        kind = "FEMALE" if "female" in name.lower() or "woman" in name.lower() else "MALE"
        counts[lang, kind] = counts.get((lang, kind), 0) + 1
        rows.append((lang, f"{kind}{counts[lang, kind]}", name))
    return rows


def module_config(bundle: str | Path, voices: list[str], *, default_voice: str | None = None,
                  service: str | None = DEFAULT_SERVICE, python: str = sys.executable) -> str:
    """The text of `voxtral-edge.conf` for sd_generic."""
    bundle = str(Path(bundle).resolve())
    command = [python, "-m", "voxtral_edge.cli", "speechd-speak", "--bundle", bundle]
    if service:
        command += ["--service", service]
    # sd_generic substitutes $VOICE, $LANGUAGE, $RATE and $PLAY_COMMAND, and escapes single quotes in $DATA
    quoted = " ".join(shlex.quote(c) for c in command).replace("'", "\\'")
    execute = (f"printf %s \\'$DATA\\' | {quoted} --voice \\'$VOICE\\' --lang \\'$LANGUAGE\\' --rate $RATE "
               f"| $PLAY_COMMAND")
    rows = voice_kinds(voices)
    default = default_voice or next((n for lang, _, n in rows if lang == "en"), rows[0][2])
    lines = ["# voxtral-edge for speech-dispatcher's generic module, written by `voxtral-edge speechd-config`.",
             f"# Bundle: {bundle}. Service: {service or 'none (the bundle is opened for each message)'}.",
             "Debug 0",
             f'GenericExecuteSynth "{execute}"',
             f'GenericCmdDependency "{python}"',
             "# $RATE as speech-dispatcher gives it, -100..100 (value = rate * Multiply / 100 + Add)",
             "GenericRateAdd 0", "GenericRateMultiply 100", "GenericRateForceInteger 1",
             "# whole messages: voxtral-edge splits sentences itself",
             "GenericMaxChunkLength 100000", 'GenericDelimiters ""',
             "# utf-8, or sd_generic recodes the text to iso-8859-1"]
    lines += [f'GenericLanguage "{lang}" "{lang}" "utf-8"' for lang in LANGUAGES]
    lines += [f'AddVoice "{lang}" "{kind}" "{name}"' for lang, kind, name in rows]
    lines.append(f'DefaultVoice "{default}"')
    return "\n".join(lines) + "\n"


def install(bundle: str | Path, voices: list[str], *, service: str | None = DEFAULT_SERVICE,
            make_default: bool = False, config_dir: Path | None = None) -> list[Path]:
    """Write the module's configuration into the user's speech-dispatcher folder and load it from the
    user's speechd.conf (a copy of the system one when there is none). speech-dispatcher stops finding
    its other modules by itself once a configuration names one, so the installed ones are named too.
    Returns the files written."""
    folder = config_dir or user_config_dir()
    conf = folder / "speechd.conf"
    (folder / "modules").mkdir(parents=True, exist_ok=True)
    module = replace_file(folder / "modules" / f"{MODULE}.conf",
                          module_config(bundle, voices, service=service).encode())
    if conf.exists():
        text = conf.read_text(encoding="utf-8")
    else:
        text = SYSTEM_CONFIG.read_text(encoding="utf-8") if SYSTEM_CONFIG.exists() else ""
    added = [line for line in _other_modules() if _module_line_name(line) not in _loaded(text)]
    lines = [line for line in text.splitlines() if not re.match(rf'\s*(AddModule|DefaultModule)\s+"?{MODULE}"?', line)]
    if make_default:
        lines = [line for line in lines if not re.match(r"\s*DefaultModule\b", line)]
    lines += ["", "# voxtral-edge (voxtral-edge speechd-config --install)", *added,
              f'AddModule "{MODULE}" "sd_generic" "{MODULE}.conf"']
    if make_default:
        lines.append(f"DefaultModule {MODULE}")
    replace_file(conf, ("\n".join(lines) + "\n").encode())
    return [module, conf]


def _loaded(text: str) -> set[str]:
    return {_module_line_name(line) for line in text.splitlines() if re.match(r"\s*AddModule\b", line)}


def _module_line_name(line: str) -> str:
    m = re.match(r'\s*AddModule\s+"?([^"\s]+)', line)
    return m.group(1) if m else ""


def _other_modules() -> list[str]:
    """AddModule lines for the compiled modules installed (sd_espeak-ng, ...) that have a configuration."""
    lines = []
    for folder in MODULES_DIRS:
        for binary in sorted(folder.glob("sd_*")) if folder.is_dir() else []:
            name = binary.name[3:]
            if name not in ("generic", "dummy") and Path(f"/etc/speech-dispatcher/modules/{name}.conf").exists():
                lines.append(f'AddModule "{name}" "{binary.name}" "{name}.conf"')
    return lines


def speed_of_rate(rate: int) -> float:
    """speech-dispatcher's rate (-100..100) as a speed: 2 ** (rate / 100), 0.5 .. 2."""
    return float(2 ** (max(-100, min(100, int(rate))) / 100))


def speak(text: str, voice: str, *, bundle: str | Path, rate: int = 0, lang: str | None = None,
          service: str | None = DEFAULT_SERVICE, out=None) -> str:
    """Write `text` as a streamed WAV to `out` (stdout): through the service when it answers, else from the
    bundle. Returns "service" or "bundle", whichever spoke."""
    out = out or sys.stdout.buffer
    speed = speed_of_rate(rate)
    if service:
        body = json.dumps({"input": text, "voice": voice, "response_format": "wav", "speed": speed,
                           "seed": SPEECHD_SEED, "priority": "assistant"}).encode()
        request = urllib.request.Request(service.rstrip("/") + "/v1/audio/speech", data=body,
                                         headers={"Content-Type": "application/json"})
        key = os.environ.get("VOXTRAL_EDGE_API_KEY")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                while chunk := response.read1(1 << 14):
                    out.write(chunk)
                    out.flush()
            return "service"
        except urllib.error.HTTPError as e:
            raise VoxtralEdgeError(f"{service}: the service refused the message ({e.code}: "
                                   f"{e.read()[:300].decode(errors='replace')})") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # no service there: speak from the bundle
    from .chain import Output
    from .runtime import Synthesizer
    from .speech import Speech
    from .text.lexicon import load_lexicon

    synth = Synthesizer.open(bundle)
    if voice not in synth.voices:
        raise UsageError(f"unknown voice {voice!r}; {bundle} has: {', '.join(sorted(synth.voices))}")
    lang = lang if lang in LANGUAGES else None
    for data in Speech(synth, text, voice, Output(speed=speed, format="wav"), seed=SPEECHD_SEED, lang=lang,
                       lexicon=load_lexicon()):
        out.write(data)
        out.flush()
    return "bundle"
