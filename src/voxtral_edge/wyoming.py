"""The Wyoming protocol (Home Assistant and other voice hubs), as wyoming-piper speaks it: `describe` ->
`info` with the voices and their languages; `synthesize` -> `audio-start`, `audio-chunk`s as the audio is
made, `audio-stop`; streamed text (`synthesize-start`, `-chunk`s, `-stop`) is spoken sentence by sentence
as sentences complete, then `synthesize-stopped`. A thin adapter: the synthesis is `voxtral_edge.speech`'s.
Needs the [wyoming] extra.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from . import __version__
from .chain import Output
from .errors import UsageError, VoxtralEdgeError
from .speech import Speech
from .text import split_sentences, voice_language

log = logging.getLogger("voxtral_edge.wyoming")
WIDTH, CHANNELS = 2, 1  # 16-bit mono


@dataclass
class WyomingConfig:
    """What `voxtral-edge wyoming` serves: the default voice, the output, the seed of every request (so that
    a phrase always sounds the same), and the synthesis options."""

    voice: str
    output: Output = field(default_factory=lambda: Output(format="pcm"))
    seed: int = 0
    options: dict = field(default_factory=dict)  # Synthesizer.start's: steps, cfg_alpha, chunk_frames, lexicon


def info(synth) -> Info:
    """The `info` event: one TTS program, a voice per preset with its language."""
    voices = [TtsVoice(name=name, description=f"{name} ({voice_language(name)})",
                       attribution=Attribution(name="Mistral AI", url="https://mistral.ai"), installed=True,
                       version=None, languages=[voice_language(name)]) for name in sorted(synth.voices)]
    return Info(tts=[TtsProgram(name="voxtral-edge", description="Voxtral TTS 4B, offline on the CPU",
                                attribution=Attribution(name="voxtral-edge", url=""), installed=True,
                                version=__version__, voices=voices, supports_synthesize_streaming=True)])


class Handler(AsyncEventHandler):
    """One client connection. Requests are spoken one at a time across connections (one Synthesizer)."""

    def __init__(self, synth, config: WyomingConfig, lock: asyncio.Lock, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.synth, self.config, self.lock = synth, config, lock
        self.streaming: dict | None = None  # a text stream in progress: its voice, format and unspoken text
        self.started = False  # audio-start sent for the current reply

    async def handle_event(self, event: Event) -> bool:
        try:
            if Describe.is_type(event.type):
                await self.write_event(info(self.synth).event())
            elif Synthesize.is_type(event.type):
                if self.streaming is None:  # inside a stream it is the copy sent for older servers
                    request = Synthesize.from_event(event)
                    await self.speak(request.text, request.voice, request.text_format)
                    await self.finish_reply()
            elif SynthesizeStart.is_type(event.type):
                start = SynthesizeStart.from_event(event)
                self.streaming = {"voice": start.voice, "format": start.text_format, "text": ""}
            elif SynthesizeChunk.is_type(event.type) and self.streaming is not None:
                self.streaming["text"] += SynthesizeChunk.from_event(event).text
                if (self.streaming["format"] or "text") == "text":  # speak the sentences that are complete
                    sentences = split_sentences(self.streaming["text"])
                    if len(sentences) > 1:
                        done = self.streaming["text"][:self.streaming["text"].rindex(sentences[-1])]
                        self.streaming["text"] = self.streaming["text"][len(done):]
                        await self.speak(done, self.streaming["voice"], "text")
            elif SynthesizeStop.is_type(event.type) and self.streaming is not None:
                stream, self.streaming = self.streaming, None
                if stream["text"].strip():
                    await self.speak(stream["text"], stream["voice"], stream["format"])
                await self.finish_reply()
                await self.write_event(SynthesizeStopped().event())
        except VoxtralEdgeError as e:
            await self.write_event(Error(text=str(e), code=type(e).__name__).event())
        return True

    def voice_for(self, requested) -> str:
        """The voice named, else the first of the language asked for, else the default."""
        voices = sorted(self.synth.voices)
        if requested is not None and requested.name:
            if requested.name not in voices:
                raise UsageError(f"unknown voice {requested.name!r}; this server has: {', '.join(voices)}")
            return requested.name
        if requested is not None and requested.language:
            lang = requested.language.split("-")[0].split("_")[0].lower()
            match = [v for v in voices if voice_language(v) == lang]
            if not match:
                raise UsageError(f"no voice speaks {requested.language!r}; this server has: {', '.join(voices)}")
            return match[0]
        return self.config.voice

    async def speak(self, text: str, voice, text_format) -> None:
        """Synthesize on a worker thread; each chunk goes out as it is made."""
        voice = self.voice_for(voice)
        rate = self.config.output.sample_rate
        if not self.started:
            await self.write_event(AudioStart(rate=rate, width=WIDTH, channels=CHANNELS).event())
            self.started = True
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def run():
            try:
                speech = Speech(self.synth, text, voice, self.config.output, seed=self.config.seed,
                                ssml=True if text_format == "ssml" else None, **self.config.options)
                for data in speech:
                    loop.call_soon_threadsafe(queue.put_nowait, data)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except Exception as e:  # noqa: BLE001 - reported to the client
                loop.call_soon_threadsafe(queue.put_nowait, e)

        async with self.lock:
            worker = loop.run_in_executor(None, run)
            while (data := await queue.get()) is not None:
                if isinstance(data, Exception):
                    await worker
                    raise data if isinstance(data, VoxtralEdgeError) else VoxtralEdgeError(f"synthesis failed: {data}")
                await self.write_event(AudioChunk(rate=rate, width=WIDTH, channels=CHANNELS, audio=data).event())
            await worker

    async def finish_reply(self) -> None:
        if not self.started:  # nothing was spoken: still a well-formed (empty) reply
            await self.write_event(AudioStart(rate=self.config.output.sample_rate, width=WIDTH,
                                              channels=CHANNELS).event())
        await self.write_event(AudioStop().event())
        self.started = False


async def serve(synth, config: WyomingConfig, uri: str, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled (or SIGINT/SIGTERM); `ready` is set once the socket listens."""
    try:
        server = AsyncServer.from_uri(uri)
    except ValueError as e:
        raise UsageError(f"--uri {uri}: {e}") from None
    handler = partial(Handler, synth, config, asyncio.Lock())
    await server.start(handler)
    log.info("ready: %s, voices %s", uri, ", ".join(sorted(synth.voices)))
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
