#!/usr/bin/env python3
"""Drives `tomoe-run MODEL` (interactive chat) through a pseudo-terminal, as a person would:
types lines, presses Ctrl-C, and reads the screen. Usage: pty_chat.py SCENARIO TOMOE_RUN MODEL.
Prints the transcript; exits 1 with a reason when the chat does not behave."""
import os
import pty
import select
import signal
import sys
import time

STATS = b"tokens/s | prompt:"


class Chat:
    def __init__(self, argv):
        # The child's own session, with the terminal as its controlling one: Ctrl-C typed
        # there sends SIGINT, as in a real terminal.
        self.pid, self.master = pty.fork()
        if self.pid == 0:
            try:
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.screen = b""
        self.cursor = 0

    def read_until(self, pattern, timeout):
        """Reads until `pattern` appears past the previous match; returns the text up to its end."""
        start, deadline = self.cursor, time.time() + timeout
        while pattern not in self.screen[start:]:
            left = deadline - time.time()
            if left <= 0:
                fail(f"timed out waiting for {pattern!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                if not data:
                    fail(f"the chat ended while waiting for {pattern!r}")
                self.screen += data
        self.cursor = self.screen.index(pattern, start) + len(pattern)
        return self.screen[start:self.cursor]

    def type(self, text):
        os.write(self.master, text.encode())

    def wait_exit(self, timeout):
        deadline = time.time() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                fail("the chat did not exit")
            time.sleep(0.05)
        code = os.waitstatus_to_exitcode(status)
        try:
            while True:
                data = os.read(self.master, 4096)
                if not data:
                    break
                self.screen += data
        except OSError:
            pass
        return code


def fail(reason):
    sys.stdout.write(chat.screen.decode(errors="replace"))
    print(f"\nFAIL: {reason}")
    try:
        os.kill(chat.pid, signal.SIGKILL)
    except OSError:
        pass
    sys.exit(1)


scenario, tomoe_run, model = sys.argv[1:4]
if scenario == "long":
    # A conversation longer than the 160-token context: old turns are dropped, the chat goes on.
    chat = Chat([tomoe_run, model, "-c", "160", "-n", "40", "--temp", "0", "-t", "1",
                 "-sys", "You are a helpful assistant."])
    chat.read_until(b"> ", 60)
    for q in ["Tell me about cats.", "Tell me about dogs.", "Tell me about horses.", "Tell me about birds."]:
        chat.type(q + "\n")
        chat.read_until(STATS, 60)
        chat.read_until(b"> ", 10)
    if b"oldest turn was dropped" not in chat.screen:
        fail("no turn was dropped, so the test did not fill the context")
    chat.type("/clear\n")
    chat.read_until(b"[conversation cleared]", 10)
    chat.type("What is the capital of France?\n")
    answer = chat.read_until(STATS, 60)
    if b"Paris" not in answer:
        fail("the answer after /clear does not say Paris")
    chat.read_until(b"> ", 10)
    chat.type("\x03")  # Ctrl-C at the empty prompt quits
    code = chat.wait_exit(10)
    if code != 0:
        fail(f"Ctrl-C at the prompt exited with {code}")
elif scenario == "interrupt":
    # Ctrl-C during an answer stops that answer only; /bye quits.
    chat = Chat([tomoe_run, model, "-n", "2000", "--temp", "0.8", "--seed", "1", "-t", "1"])
    chat.read_until(b"> ", 60)
    chat.type("Write a very long story about a dragon, with many chapters.\n")
    time.sleep(1.0)
    chat.type("\x03")
    chat.read_until(b"[stopped]", 20)
    chat.read_until(b"> ", 10)
    chat.type("/bye\n")
    code = chat.wait_exit(10)
    if code != 0:
        fail(f"/bye exited with {code}")
else:
    sys.exit(f"unknown scenario {scenario}")
sys.stdout.write(chat.screen.decode(errors="replace"))
print("\nOK")
