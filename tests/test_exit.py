"""``ben``'s process exit: atexit handlers and unflushed output survive the fast exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import atexit, sys, threading, time
import torch
from ben_cli.cli.app import exit_now
atexit.register(lambda: print("atexit ran", flush=True))
sys.stdout.write("unflushed;")
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done;", end=""))).start()
exit_now(3)
print("never")
"""


@pytest.mark.parametrize("case", ["alone", "thread"])
def test_exit_now_keeps_the_code_the_output_and_the_atexit_handlers(case):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("unflushed;") and proc.stdout.rstrip().endswith("atexit ran")
    assert "never" not in proc.stdout
    # a live non-daemon thread is waited for (the plain sys.exit path), never cut off
    assert ("thread done;" in proc.stdout) == (case == "thread")
