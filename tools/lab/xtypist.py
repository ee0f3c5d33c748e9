#!/usr/bin/env python3
"""Types the typist's commands into the focused window of an X display (a VNC or RDP
viewer) with xdotool, one key at a time 80-250 ms apart, moving the pointer between
commands, so the remote screen changes the way it does under a person.

Usage: DISPLAY=:N xtypist.py SEED
"""
import random
import subprocess
import sys
import time

from typist import COMMANDS


def xdo(*args):
    subprocess.run(["xdotool", *args], check=True)


def main():
    rng = random.Random(int(sys.argv[1]))
    for cmd in COMMANDS + ["clear"]:
        # Wander with the pointer (kept over the remote terminal so it keeps the focus).
        for _ in range(rng.randint(3, 6)):
            xdo("mousemove", str(rng.randint(100, 500)), str(rng.randint(100, 400)))
            time.sleep(rng.uniform(0.05, 0.15))
        time.sleep(rng.uniform(0.6, 1.2))
        for ch in cmd:
            xdo("type", "--delay", "0", "--", ch)
            time.sleep(rng.uniform(0.080, 0.250))
        xdo("key", "Return")


if __name__ == "__main__":
    main()
