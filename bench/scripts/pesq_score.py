#!/usr/bin/env python3
"""PESQ wideband (ITU-T P.862.2) of a degraded recording against its reference.

Usage: pesq_score.py REFERENCE.wav DEGRADED.wav
Both: 16 kHz, mono, 16-bit PCM (the bench resamples with sox first).
Prints one JSON object: {"pesq_wb": MOS-LQO} or {"error": "..."}; exits 0 either
way when the inputs could be read, so the bench can report why a score is missing.
"""
import json
import sys
import wave

import numpy as np
from pesq import pesq


def read(path):
    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: need mono 16-bit PCM")
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    return rate, samples


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    ref_rate, ref = read(sys.argv[1])
    deg_rate, deg = read(sys.argv[2])
    if ref_rate != 16000 or deg_rate != 16000:
        raise SystemExit("both files must be 16 kHz for wideband PESQ")
    try:
        score = pesq(16000, ref, deg, "wb")
        print(json.dumps({"pesq_wb": float(score)}))
    except Exception as e:  # pesq raises on e.g. no utterances detected
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))


if __name__ == "__main__":
    main()
