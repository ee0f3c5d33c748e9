#!/usr/bin/env python3
"""Types shell commands into an interactive program like a person: one key at a time,
80-250 ms apart (seeded, so a remake types the same rhythm), a pause to read each answer.

Usage: typist.py SEED -- COMMAND [ARG...]   (the command must end in a shell prompt)
"""
import random
import sys
import time

import pexpect

COMMANDS = [
    "uname -a",
    "ls -la /etc | head -5",
    "cat /etc/os-release | grep PRETTY",
    "df -h / | tail -1",
    "echo quarterly report done",
]
PROMPT = r"[#$] $"


def main():
    seed = int(sys.argv[1])
    argv = sys.argv[sys.argv.index("--") + 1 :]
    rng = random.Random(seed)
    child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", timeout=30)
    child.logfile_read = sys.stdout
    child.expect(PROMPT)
    for cmd in COMMANDS + ["exit"]:
        time.sleep(rng.uniform(0.8, 1.6))  # reading the last answer
        for ch in cmd + "\r":
            child.send(ch)
            time.sleep(rng.uniform(0.080, 0.250))
        if cmd != "exit":
            child.expect(PROMPT)
    child.expect(pexpect.EOF)


if __name__ == "__main__":
    main()
