"""Time of the text front-end per sentence: `python benchmarks/normalize.py [--n 2000]`.

One navigation sentence per language with numbers, units, a time and a road, its numbers changed on every
call (so the cache of spelled numbers does not flatter it), and one sentence without numbers. Prints the
best of 5 runs in microseconds per sentence, and the load average: on a shared machine the figures are
upper bounds.
"""

from __future__ import annotations

import argparse
import os
import time

from voxtral_edge.machine import usable_cores
from voxtral_edge.text import normalize

SENTENCES = {
    "en": "In {a} m, turn right onto the A{b} (exit {c}a) at {h}:{m:02d}, then {d}.{e} km at {f} km/h.",
    "fr": "Dans {a} m, tournez à droite sur l'A{b}, sortie {c}a, à {h}h{m:02d}, puis {d},{e} km à {f} km/h.",
    "es": "En {a} m, gire a la derecha en la A-{b}, salida {c}a, a las {h}:{m:02d}; quedan {d},{e} km.",
    "pt": "Em {a} m, vire à direita na BR-{b}, saída {c}a, às {h}h{m:02d}; faltam {d},{e} km.",
    "it": "Tra {a} m, svoltare a destra sulla A{b}, uscita {c}a, alle {h}:{m:02d}; mancano {d},{e} km.",
    "nl": "Over {a} m rechtsaf de A{b} op, afrit {c}a, om {h}:{m:02d}; nog {d},{e} km.",
    "de": "In {a} m rechts auf die B {b} abbiegen, Ausfahrt {c}a, um {h}:{m:02d} Uhr; noch {d},{e} km.",
    "hi": "{a} मीटर बाद NH {b} पर दाएँ मुड़ें, {h}:{m:02d} बजे, {d}.{e} km बाकी।",
    "ar": "بعد {a} م انعطف يمينا إلى E{b}، الساعة {h}:{m:02d}، المتبقي {d}.{e} كم.",
}
PLAIN = "Please keep to the right lane and follow the signs towards the city centre."


def per_sentence_us(make, lang: str, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        texts = [make(i) for i in range(n)]
        t0 = time.perf_counter()
        for text in texts:
            normalize(text, lang)
        best = min(best, (time.perf_counter() - t0) / n)
    return 1e6 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="sentences per run (default: 2000)")
    n = parser.parse_args().n
    for lang in SENTENCES:
        normalize("1", lang)  # rules compiled and num2words loaded once, as in a running service
    print(f"load average {os.getloadavg()[0]:.1f} on {usable_cores()} cores")
    for lang, pattern in SENTENCES.items():
        make = lambda i, p=pattern: p.format(a=i % 997 + 3, b=i % 89 + 1, c=i % 41 + 1, h=i % 24, m=i % 60,  # noqa: E731
                                             d=i % 9, e=i % 10, f=i % 130 + 10)
        print(f"{lang}  {per_sentence_us(make, lang, n):6.0f} us per sentence  ({len(make(0))} characters)")
    print(f"en, no numbers  {per_sentence_us(lambda i: PLAIN, 'en', n):6.0f} us per sentence")


if __name__ == "__main__":
    main()
