"""Writes tekken.json files in the released Voxtral TTS layout for generated test checkpoints.

The regular vocabulary is a real byte-level BPE: the 256 single bytes, merges learned on a small
embedded multilingual corpus, then tokens made by joining two earlier tokens up to the requested size.
"""

from __future__ import annotations

import base64
import heapq
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from tokenizers import Regex, pre_tokenizers

# The split pattern of the released Tekken tokenizers (mistral_common/data/tekken_240911.json).
PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Named special tokens at their ids in the released file; every other id is a filler.
NAMED_SPECIAL_IDS = {
    "<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[AVAILABLE_TOOLS]": 5,
    "[/AVAILABLE_TOOLS]": 6, "[TOOL_RESULTS]": 7, "[/TOOL_RESULTS]": 8, "[TOOL_CALLS]": 9, "[IMG]": 10,
    "<pad>": 11, "[IMG_BREAK]": 12, "[IMG_END]": 13, "[PREFIX]": 14, "[MIDDLE]": 15, "[SUFFIX]": 16,
    "[SYSTEM_PROMPT]": 17, "[/SYSTEM_PROMPT]": 18, "[TOOL_CONTENT]": 19, "[AUDIO]": 24, "[BEGIN_AUDIO]": 25,
    "[OUTPUT_AUDIO]": 26, "[ARGS]": 32, "[CALL_ID]": 33, "[TRANSCRIBE]": 34, "[REPEAT_AUDIO_TEXT]": 35,
    "[NEXT_AUDIO_TEXT]": 36,
}

CORPUS = """\
The morning train to the coast was late again, so we bought coffee and watched the rain.
Please turn left at the next junction and keep driving for another three kilometres.
She said the weather would be better tomorrow, but nobody really believed her.
Le petit café au coin de la rue ouvre à sept heures, même le dimanche.
Nous avons traversé la ville à vélo pour voir le marché de Noël avec nos enfants.
Il faut prendre la deuxième sortie après le pont, puis continuer tout droit.
El tren de la mañana llegó con retraso, así que esperamos en la estación.
Mi abuela cocina una paella deliciosa todos los domingos para la familia.
¿Dónde está la farmacia más cercana? Necesito comprar algo para el dolor de cabeza.
O ônibus para o centro da cidade passa a cada quinze minutos, exceto aos sábados.
Ela gosta de ler livros de aventura enquanto toma um café com leite.
As crianças brincaram no parque até o pôr do sol e voltaram muito cansadas.
La macchina si è fermata in mezzo alla strada e abbiamo chiamato il carro attrezzi.
Domani andiamo al mare con gli amici, se il tempo sarà bello.
Questa è la strada più breve per arrivare alla stazione centrale.
De trein naar Amsterdam vertrekt over tien minuten vanaf spoor vijf.
Wij hebben gisteren een lange wandeling gemaakt langs de rivier en de molens.
Kun je de verwarming iets hoger zetten? Het is erg koud in de auto.
Der Zug nach München fährt heute wegen Bauarbeiten eine halbe Stunde später ab.
Wir haben am Wochenende einen Ausflug in die Berge gemacht und viel gewandert.
Bitte schließen Sie die Fenster, bevor Sie das Fahrzeug verlassen.
आज मौसम बहुत सुहावना है और हम शाम को पार्क में टहलने जाएंगे।
कृपया अगले चौराहे से दाईं ओर मुड़ें और सीधे चलते रहें।
मेरी माँ हर रविवार को स्वादिष्ट खाना बनाती है और पूरा परिवार साथ खाता है।
الطقس جميل اليوم، لذلك سنذهب إلى الحديقة بعد الظهر.
من فضلك انعطف يمينًا عند الإشارة التالية ثم استمر في القيادة.
يحب أخي قراءة الكتب في المكتبة العامة كل يوم سبت.
0 1 2 3 4 5 6 7 8 9 10 42 100 365 1000 2024 3.14 12:30 +49 (0) 30 1234567
... !? ?! -- (a) [b] {c} <d> "quoted" 'single' 50% #1 @home & co. * / \\ | ~ ^ _ = ;:
😀 😂 👍 🚗 🌍 🎵 ❤️ 👨‍👩‍👧 🇩🇪 🇫🇷 ✨ 🙂
"""


def _learn_bpe(corpus: str, max_new: int) -> list[bytes]:
    """Up to `max_new` new tokens in merge order, each the most frequent adjacent pair (ties: smallest bytes)."""
    split = pre_tokenizers.Split(Regex(PATTERN), behavior="isolated")
    counts = Counter(piece.encode() for piece, _ in split.pre_tokenize_str(corpus))
    words = [[bytes([b]) for b in word] for word in counts]
    freq = list(counts.values())
    pairs: Counter = Counter()
    where = defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] += freq[i]
            where[pair].add(i)
    # Max-heap on (count, then smallest pair) with stale entries skipped, so ties break deterministically.
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    known, new = {bytes([b]) for b in range(256)}, []
    while heap and len(new) < max_new:
        neg, pair = heapq.heappop(heap)
        if pairs.get(pair) != -neg:
            continue
        merged = pair[0] + pair[1]
        if merged not in known:
            known.add(merged)
            new.append(merged)
        touched = set()
        for i in where.pop(pair):
            old, word = words[i], []
            for q in zip(old, old[1:]):
                pairs[q] -= freq[i]
                touched.add(q)
            for sym in old:
                if word and (word[-1], sym) == pair:
                    word[-1] = merged
                else:
                    word.append(sym)
            for q in zip(word, word[1:]):
                pairs[q] += freq[i]
                where[q].add(i)
                touched.add(q)
            words[i] = word
        for q in touched:
            if pairs[q] > 0:
                heapq.heappush(heap, (-pairs[q], q))
            else:
                del pairs[q]
    return new


def build_vocab(num_vocab_tokens: int, seed: int = 0) -> list[bytes]:
    """`num_vocab_tokens` distinct tokens in rank order: bytes, learned merges, then joined pairs."""
    tokens = [bytes([b]) for b in range(256)] + _learn_bpe(CORPUS, num_vocab_tokens - 256)
    # Continuations are text starting with a letter, so joined tokens can occur inside a word.
    tails = [t for t in tokens if (_token_str(t) or "0")[0].isalpha()]
    seen, rng = set(tokens), random.Random(seed)
    while len(tokens) < num_vocab_tokens:
        # Any token + a continuation keeps every token reachable by merges; lengths grow slowly (cap 16).
        token = tokens[int(rng.random() * len(tokens))] + tails[int(rng.random() * len(tails))]
        if len(token) <= 16 and token not in seen:
            seen.add(token)
            tokens.append(token)
    return tokens


def _token_str(token: bytes) -> str | None:
    try:
        return token.decode("utf-8")
    except UnicodeDecodeError:
        return None


def write_tekken(path: str | Path, *, n_special: int, vocab_size: int, num_vocab_tokens: int,
                 voices: dict[str, int], sampling_rate: int = 24000, frame_rate: float = 12.5,
                 seed: int = 0) -> Path:
    """Writes a v7 tekken.json with an audio section; returns its path. Same arguments, same bytes."""
    if n_special <= max(NAMED_SPECIAL_IDS.values()):
        raise ValueError(f"n_special={n_special} cannot hold the named special ids up to "
                         f"{max(NAMED_SPECIAL_IDS.values())}")
    if vocab_size - n_special < 256 or num_vocab_tokens < vocab_size - n_special:
        raise ValueError(f"need 256 <= vocab_size - n_special <= num_vocab_tokens, got vocab_size={vocab_size}, "
                         f"n_special={n_special}, num_vocab_tokens={num_vocab_tokens}")
    if not all(isinstance(n, int) and n > 0 for n in voices.values()):
        raise ValueError(f"voice token counts must be positive ints: {voices}")
    names = {i: name for name, i in NAMED_SPECIAL_IDS.items()}
    data = {
        "config": {"pattern": PATTERN, "num_vocab_tokens": num_vocab_tokens, "default_vocab_size": vocab_size,
                   "default_num_special_tokens": n_special, "version": "v7"},
        "vocab": [{"rank": i, "token_bytes": base64.b64encode(t).decode("ascii"), "token_str": _token_str(t)}
                  for i, t in enumerate(build_vocab(num_vocab_tokens, seed))],
        "special_tokens": [{"rank": i, "token_str": names.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                           for i in range(n_special)],
        "audio": {"sampling_rate": sampling_rate, "frame_rate": frame_rate,
                  "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
                  "chunk_length_s": 30.0, "voice_num_audio_tokens": dict(voices)},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path
