"""The resident agent: runs inside an activity's container and spawns its commands.

The daemon mounts this one file read-only into the container and starts it with the image's own
python3 (standard library only, Python 3.6 or newer, and only modules that start fast: no json,
no re). It connects to a unix socket the daemon listens on (in a directory mounted read-only, so
nothing in the container can replace it) and serves one command at a time. Frames:

    frame  = length (u32, of kind + payload) | kind (1 byte) | payload; integers big endian
    daemon -> agent
      RUN    u64 id | u32 argc | u32 envc | NUL-terminated: workdir, argv..., "KEY=value"...
      KILL   u64 id                      SIGKILL the command's process group
      ACK    u64 id | u64 offset | u8 done   output up to offset is safe; done: EXIT was received
      RESUME u64 id | u64 offset         send the command's output again from offset, then go on
    agent -> daemon
      HELLO  u16 version | u64 id | u64 acked   the command it holds (id 0: none)
      OUT / ERR  raw bytes of the command's stdout / stderr
      EXIT   i32 code, once the command is over

Output is kept in a bounded spool until the daemon acknowledges it, and commands do not depend on
the connection: when the daemon dies, the command runs on, its output fills the spool (then the
command blocks on its pipe, nothing is dropped), and the agent connects again and waits for a
RESUME from the daemon that comes back. A command is over when its process has exited and its
pipes are drained, or idle for DRAIN_IDLE seconds after the exit: a background child that keeps
the pipes open keeps running, but does not hold up the next command. The agent runs with exactly
the container's privileges; the daemon trusts nothing it says.
"""

import bisect
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

VERSION = 2
HELLO, RUN, KILL, ACK, RESUME, OUT, ERR, EXIT = b"H", b"R", b"K", b"A", b"U", b"O", b"E", b"X"
HEADER = struct.Struct(">I")
RUN_HEAD = struct.Struct(">QII")
ID = struct.Struct(">Q")
ID_OFFSET = struct.Struct(">QQ")
ACK_BODY = struct.Struct(">QQB")
HELLO_BODY = struct.Struct(">HQQ")
CODE = struct.Struct(">i")
MAX_FRAME = 16 << 20
READ_CHUNK = 256 << 10
SPOOL_BYTES = 8 << 20  # output not yet acknowledged; beyond it the command waits on its pipe
PIECE_BYTES = 256 << 10  # reads of one stream are joined into spool pieces up to this size
PIECE_COST = 128  # what a spool piece costs beyond its bytes (counted against SPOOL_BYTES)
SEND_BYTES = 1 << 20  # at most this much output per frame
DRAIN_IDLE = 0.2


class Link:
    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, kind, payload=b""):
        with self.lock:
            self.sock.sendall(HEADER.pack(len(payload) + 1) + kind + payload)

    def receive(self):
        (length,) = HEADER.unpack(self._exactly(HEADER.size))
        if not 1 <= length <= MAX_FRAME:
            raise ValueError("bad frame length")
        frame = self._exactly(length)
        return frame[:1], frame[1:]

    def _exactly(self, count):
        parts = []
        while count:
            part = self.sock.recv(min(count, 1 << 20))
            if not part:
                raise EOFError
            parts.append(part)
            count -= len(part)
        return b"".join(parts)


class Command:
    """One command: its process, and its output from the last acknowledged byte on."""

    def __init__(self, command_id, argv, env, workdir):
        self.id = command_id
        self.cond = threading.Condition()
        self.starts = []  # output offset where each spool piece begins, ascending
        self.pieces = []  # (kind, bytearray) in order: the output from about `acked` on
        self.acked = 0
        self.total = 0
        self.code = None  # set once the command is over
        self.abandoned = False
        self.last_output = time.monotonic()
        self.process = None
        environment = dict(os.environ)
        environment.update(env)
        try:
            self.process = subprocess.Popen(
                argv, env=environment, cwd=workdir or None, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            self._append(ERR, ("%s: %s\n" % (argv[0] if argv else "", exc.strerror)).encode())
            self._finish(127 if isinstance(exc, FileNotFoundError) else 126)
            return
        threading.Thread(target=self._wait, daemon=True).start()

    def _append(self, kind, data):
        with self.cond:
            while self._pressure() >= SPOOL_BYTES and not self.abandoned and self.code is None:
                self.cond.wait()
            if self.abandoned or self.code is not None:
                return  # a background child's output after the end is dropped
            last = self.pieces[-1] if self.pieces else None
            if last is not None and last[0] == kind and len(last[1]) < PIECE_BYTES:
                last[1].extend(data)
            else:
                self.starts.append(self.total)
                self.pieces.append((kind, bytearray(data)))
            self.total += len(data)
            self.cond.notify_all()

    def _pressure(self):
        return self.total - self.acked + PIECE_COST * len(self.pieces)

    def _finish(self, code):
        """The command is over: what the spool holds is all its output."""
        with self.cond:
            self.code = code
            self.cond.notify_all()

    def _pump(self, pipe, kind, done):
        try:
            while True:
                data = os.read(pipe.fileno(), READ_CHUNK)
                if not data:
                    break
                self.last_output = time.monotonic()
                self._append(kind, data)
        except OSError:
            pass
        done.set()

    def _wait(self):
        finished = [threading.Event(), threading.Event()]
        for pipe, kind, done in ((self.process.stdout, OUT, finished[0]), (self.process.stderr, ERR, finished[1])):
            threading.Thread(target=self._pump, args=(pipe, kind, done), daemon=True).start()
        code = self.process.wait()
        for done in finished:
            while not done.is_set():
                idle = time.monotonic() - self.last_output
                if idle > DRAIN_IDLE:
                    break  # a background child holds the pipes: leave it running
                done.wait(DRAIN_IDLE - idle + 0.001)
        self._finish(code if code >= 0 else 128 - code)

    def acknowledge(self, offset, done):
        with self.cond:
            if offset > self.acked:
                self.acked = min(offset, self.total)
                # pieces wholly acknowledged go; the one the offset falls in stays
                gone = max(bisect.bisect_right(self.starts, self.acked) - 1, 0)
                del self.starts[:gone], self.pieces[:gone]
                self.cond.notify_all()
            return done and self.code is not None and self.acked == self.total

    def stream(self, link, offset, stopped):
        """Sends output from `offset` (at least what was acknowledged), then EXIT; returns when the
        command is over or abandoned, or `stopped` is set (the connection went away)."""
        offset = max(offset, self.acked)
        while not stopped.is_set():
            with self.cond:
                while not (stopped.is_set() or self.abandoned) and offset >= self.total and self.code is None:
                    self.cond.wait(0.5)
                if self.abandoned:
                    return
                frames = self._frames(offset)
                code = self.code if offset + sum(len(data) for _, data in frames) >= self.total else None
            for kind, data in frames:
                link.send(kind, data)
                offset += len(data)
            if code is not None:
                link.send(EXIT, CODE.pack(code))
                return

    def _frames(self, offset):
        """Spooled output from `offset`, at most SEND_BYTES per frame and 4 frames at a time."""
        frames = []
        index = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        while index < len(self.pieces) and len(frames) < 4:
            kind, data = self.pieces[index]
            skip = max(offset - self.starts[index], 0)
            chunk = bytes(data[skip:skip + SEND_BYTES])
            if chunk:
                frames.append((kind, chunk))
                offset += len(chunk)
            if skip + len(chunk) >= len(data):
                index += 1
        return frames

    def kill(self):
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                pass

    def abandon(self):
        """The daemon moved on: stop keeping output (the pipes are still drained)."""
        with self.cond:
            self.abandoned = True
            self.starts, self.pieces = [], []
            self.cond.notify_all()


def parse_run(payload):
    command_id, argc, envc = RUN_HEAD.unpack_from(payload)
    fields = payload[RUN_HEAD.size:].split(b"\0")
    if len(fields) != 1 + argc + envc + 1 or fields[-1] or argc < 1:
        raise ValueError("bad run frame")
    workdir = fields[0].decode("utf-8", "surrogateescape")
    argv = [field.decode("utf-8", "surrogateescape") for field in fields[1:1 + argc]]
    env = {}
    for field in fields[1 + argc:-1]:
        key, _, value = field.decode("utf-8", "surrogateescape").partition("=")
        env[key] = value
    return command_id, argv, env, workdir


class Agent:
    def __init__(self):
        self.command = None  # the command being run or not yet fully acknowledged

    def serve(self, path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        link = Link(sock)
        held = self.command
        link.send(HELLO, HELLO_BODY.pack(VERSION, held.id if held else 0, held.acked if held else 0))
        stopped = threading.Event()
        try:
            while True:
                kind, payload = link.receive()
                if kind == RUN:
                    if self.command is not None:
                        self.command.abandon()
                    self.command = Command(*parse_run(payload))
                    self._stream(link, self.command, 0, stopped)
                elif kind == RESUME and self.command is not None:
                    command_id, offset = ID_OFFSET.unpack(payload)
                    if command_id == self.command.id:
                        self._stream(link, self.command, offset, stopped)
                elif kind == ACK and self.command is not None:
                    command_id, offset, done = ACK_BODY.unpack(payload)
                    if command_id == self.command.id and self.command.acknowledge(offset, done):
                        self.command = None
                elif kind == KILL and self.command is not None:
                    if ID.unpack(payload)[0] == self.command.id:
                        self.command.kill()
        finally:
            stopped.set()
            sock.close()

    @staticmethod
    def _stream(link, command, offset, stopped):
        def send():
            try:
                command.stream(link, offset, stopped)
            except OSError:
                pass

        threading.Thread(target=send, daemon=True).start()


def main():
    path = sys.argv[1]
    agent = Agent()
    while True:  # the daemon may restart: connect again; commands run on meanwhile
        try:
            agent.serve(path)
        except (OSError, EOFError, ValueError, struct.error):
            time.sleep(0.5)


if __name__ == "__main__":
    main()
