"""The resident agent: runs inside an activity's container and spawns its commands.

The daemon mounts this one file read-only into the container and starts it with the image's own
python3 (standard library only, Python 3.8 or newer, and only modules that start fast: no json,
re, enum, socket or subprocess, which would more than double its start-up in every container).
It connects to a unix socket the daemon listens on (in a directory mounted read-only, so nothing
in the container can replace it) and serves one command at a time. Frames:

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
pipes are closed, or idle for DRAIN_IDLE seconds after the exit: a background child that keeps
the pipes open keeps running, does not hold up the next command, and what it writes later is read
and dropped (it never blocks on a full pipe). Idle counts only while the pipes are read: while the
spool is full they are not, and what the command left in them at its exit is its output still.

One thread does everything (a poll loop over the socket, the pipes and a pidfd per process), so
a command costs no thread hand-off. The agent runs with exactly the container's privileges; the
daemon trusts nothing it says.
"""

import _signal
import _socket
import bisect
import errno
import fcntl
import os
import select
import struct
import sys
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
PIPE_BYTES = 1 << 20  # a fast writer's stdout pipe holds this much (Linux: 64 KiB); one read takes it all
SPOOL_BYTES = 8 << 20  # output not yet acknowledged; beyond it the command waits on its pipe
PIECE_BYTES = 1 << 20  # reads of one stream are joined into a spool piece until it is this large
PIECE_COST = 128  # what a spool piece costs beyond its bytes (counted against SPOOL_BYTES)
SEND_BYTES = 1 << 20  # output queued to the socket at a time
DRAIN_IDLE = 0.2
RECONNECT_SECONDS = 0.5
EXIT_POLL = 0.05  # how often an exit is looked for where pidfds are missing


class Command:
    """One command: its process, its open pipes, and its output from the last acknowledged byte."""

    def __init__(self, command_id, argv, env, workdir):
        self.id = command_id
        self.starts = []  # output offset where each spool piece begins, ascending
        self.pieces = []  # (kind, bytearray) in order: the output from about `acked` on
        self.acked = 0
        self.total = 0
        self.code = None  # set once the command is over
        self.status = None  # the process's exit code, once reaped
        self.quiet_since = time.monotonic()  # since when its pipes, read, gave nothing (None: not read now)
        self.pipes = {}  # fd -> OUT or ERR, while open
        self.pidfd = None
        self.pid = None
        environment = dict(os.environ)
        environment.update(env)
        if workdir and not os.path.isdir(workdir):
            self._append(ERR, ("workdir %s: no such directory in the container\n" % workdir).encode())
            self.finish(126)
            return
        try:
            self.pid, out, err = spawn(argv, environment, workdir)
        except OSError as exc:
            self._append(ERR, ("%s: %s\n" % (argv[0], exc.strerror)).encode())
            self.finish(127 if isinstance(exc, FileNotFoundError) else 126)
            return
        self.pipes = {out: OUT, err: ERR}
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(self.pid)
            except OSError:
                pass

    # Output

    def _append(self, kind, data):
        last = self.pieces[-1] if self.pieces else None
        if last is not None and last[0] == kind and len(last[1]) < PIECE_BYTES:
            last[1].extend(data)
        else:
            self.starts.append(self.total)
            self.pieces.append((kind, bytearray(data)))
        self.total += len(data)

    def wants_output(self):
        """Whether to read its pipes now: while the spool has room, and always once it is over
        (then what comes is dropped)."""
        return self.code is not None or self.total - self.acked + PIECE_COST * len(self.pieces) < SPOOL_BYTES

    def not_read(self):
        """Its pipes are left unread this turn (the spool is full): their silence says nothing,
        and idle time counts again from when they are read."""
        self.quiet_since = None

    def read(self, fd):
        try:
            data = os.read(fd, PIPE_BYTES)
        except OSError:
            data = b""
        if not data:
            del self.pipes[fd]
            os.close(fd)
            return
        self.quiet_since = time.monotonic()
        if len(data) >= 1 << 16 and self.pipes[fd] == OUT:  # a fast writer filled a default pipe: only
            try:  # its pipe grows (all count against one pipe allowance, fs.pipe-user-pages-soft), and
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # its output is 1 daemon event per MiB, not 4.4
            except (OSError, AttributeError):  # past that allowance, or Python < 3.10: as it was
                pass
        if self.code is None:
            self._append(self.pipes[fd], data)

    def piece_at(self, offset):
        """(kind, piece, skip): the spool piece holding output byte `offset`, or None."""
        index = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        if index >= len(self.pieces):
            return None
        kind, data = self.pieces[index]
        skip = offset - self.starts[index]
        return (kind, data, skip) if 0 <= skip < len(data) else None

    def acknowledge(self, offset, done):
        """Frees the spool up to `offset`; True when the daemon has all of it, EXIT included."""
        if offset > self.acked:
            self.acked = min(offset, self.total)
            gone = max(bisect.bisect_right(self.starts, self.acked) - 1, 0)
            del self.starts[:gone], self.pieces[:gone]
        return bool(done) and self.code is not None and self.acked == self.total

    # Ending

    def check_exit(self):
        """Reaps the process once it ended; ends the command once, besides, its pipes are closed
        or idle."""
        if self.pid is not None and self.status is None:
            self.status = reap(self.pid)
            if self.status is not None and self.pidfd is not None:
                os.close(self.pidfd)
                self.pidfd = None
        if self.code is None and self.status is not None:
            if not self.pipes:
                self.finish(self.status)
            elif self.quiet_since is None:
                self.quiet_since = time.monotonic()  # read from now on: idle counts from here
            elif time.monotonic() - self.quiet_since > DRAIN_IDLE:
                self.finish(self.status)

    def lingers(self):
        """Whether anything of it is left to drain or reap after the daemon is done with it."""
        return bool(self.pipes) or (self.pid is not None and self.status is None)

    def wait_seconds(self):
        """How long the poll may sleep before `check_exit` has something new to decide."""
        if self.pid is None:
            return None
        if self.status is None:
            return None if self.pidfd is not None else EXIT_POLL
        if self.code is not None:
            return None
        if not self.pipes:
            return 0
        if self.quiet_since is None:  # not read while the spool is full: the daemon's ACK wakes us
            return None if not self.wants_output() else 0
        return max(DRAIN_IDLE - (time.monotonic() - self.quiet_since), 0) + 0.001

    def finish(self, code):
        self.code = code

    def kill(self):
        if self.pid is not None and self.code is None:
            try:
                os.killpg(self.pid, _signal.SIGKILL)  # its own session: the whole group
            except OSError:
                pass

    def abandon(self):
        """The daemon moved on: keep nothing more (its pipes are still drained)."""
        if self.code is None:
            self.code = -1
        self.starts, self.pieces = [], []


def spawn(argv, env, workdir):
    """Starts argv in a session of its own, stdin from /dev/null, stdout and stderr into new pipes;
    returns (pid, stdout read end, stderr read end). Raises OSError when it cannot be started."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out_write, 1), (os.POSIX_SPAWN_DUP2, err_write, 2)]
    home = os.getcwd()  # the image's WORKDIR, where the agent was started
    try:
        if workdir:  # posix_spawn has no working directory; the agent is single-threaded, so lend it ours
            os.chdir(workdir)
        pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions, setsid=True,
                              setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))  # Python ignores these
    except OSError:
        os.close(out_read)
        os.close(err_read)
        raise
    finally:
        os.close(out_write)
        os.close(err_write)
        if workdir:
            os.chdir(home)
    return pid, out_read, err_read


def reap(pid):
    """The exit code of `pid` if it has ended (128 + N when killed by signal N), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    if done == 0:
        return None
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


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


def frame(kind, payload=b""):
    return HEADER.pack(len(payload) + 1) + kind + payload


class Agent:
    def __init__(self, path):
        self.path = path
        self.sock = None
        self.inbox = bytearray()
        self.outbox = bytearray()  # bytes for the socket, not yet written
        self.command = None  # the command being run, or over but not yet fully acknowledged
        self.draining = []  # earlier commands whose pipes a background child still holds
        self.sending = None  # output offset of `command` to send next, or None
        self.next_connect = 0.0

    # Connection

    def connect(self):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            self.next_connect = time.monotonic() + RECONNECT_SECONDS
            return
        sock.setblocking(False)
        self.sock, self.inbox, self.sending = sock, bytearray(), None
        held = self.command
        self.outbox = bytearray(frame(HELLO, HELLO_BODY.pack(VERSION, held.id if held else 0, held.acked if held else 0)))

    def disconnect(self):
        self.sock.close()
        self.sock, self.sending = None, None
        self.next_connect = time.monotonic() + RECONNECT_SECONDS

    def receive(self):
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.disconnect()
            return
        self.inbox += data
        while len(self.inbox) >= HEADER.size:
            (length,) = HEADER.unpack_from(self.inbox)
            if not 1 <= length <= MAX_FRAME:
                self.disconnect()
                return
            if len(self.inbox) < HEADER.size + length:
                return
            kind = bytes(self.inbox[HEADER.size:HEADER.size + 1])
            payload = bytes(self.inbox[HEADER.size + 1:HEADER.size + length])
            del self.inbox[:HEADER.size + length]
            try:
                self.handle(kind, payload)
            except (ValueError, struct.error):
                self.disconnect()
                return

    def handle(self, kind, payload):
        command = self.command
        if kind == RUN:
            if command is not None:
                command.abandon()
                if command.lingers():
                    self.draining.append(command)
            self.command = Command(*parse_run(payload))
            self.sending = 0
        elif kind == RESUME and command is not None:
            command_id, offset = ID_OFFSET.unpack(payload)
            if command_id == command.id:
                self.sending = max(offset, command.acked)
        elif kind == ACK and command is not None:
            command_id, offset, done = ACK_BODY.unpack(payload)
            if command_id == command.id and command.acknowledge(offset, done):
                self.command = None
                if command.lingers():
                    self.draining.append(command)
        elif kind == KILL and command is not None:
            if ID.unpack(payload)[0] == command.id:
                command.kill()

    def flush(self):
        """Writes what the daemon should get next, as much as the socket takes. Output goes from
        the spool to the socket without a copy; only what the socket refuses is copied aside."""
        if self.outbox and not self._write():
            return
        command = self.command
        while self.sending is not None and command is not None and self.sock is not None:
            found = command.piece_at(self.sending)
            if found is not None:
                kind, data, skip = found
                length = min(len(data) - skip, SEND_BYTES)
                with memoryview(data) as whole, whole[skip:skip + length] as view:
                    done = self._write(HEADER.pack(length + 1) + kind, view)
                if self.sock is None:
                    return
                self.sending += length
                if not done:
                    return
            elif command.code is not None and self.sending >= command.total:
                self.sending = None
                self._write(frame(EXIT, CODE.pack(command.code)))
            else:
                return

    def _write(self, *parts):
        """Sends the outbox, then `parts`; what the socket does not take is copied into the
        outbox (sent first next time). True when everything went."""
        if self.outbox:
            for part in parts:
                self.outbox += part
            parts = (self.outbox,)
        try:
            sent = self.sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.disconnect()
            return False
        if parts[0] is self.outbox:
            del self.outbox[:sent]
            return not self.outbox
        for part in parts:
            if sent < len(part):
                self.outbox += part[sent:]
            sent = max(sent - len(part), 0)
        return not self.outbox

    # The loop

    def run(self):
        while True:
            if self.sock is None and time.monotonic() >= self.next_connect:
                self.connect()
            if self.sock is not None:
                self.flush()
            poller = select.poll()
            timeout = None
            if self.sock is not None:
                poller.register(self.sock, select.POLLIN | (select.POLLOUT if self.outbox else 0))
            else:
                timeout = max(self.next_connect - time.monotonic(), 0)
            readers = {}
            for command in [self.command] + self.draining if self.command else self.draining:
                if command.wants_output():
                    for fd in command.pipes:
                        readers[fd] = command
                        poller.register(fd, select.POLLIN)
                else:
                    command.not_read()
                if command.pidfd is not None and command.status is None:
                    readers[command.pidfd] = command
                    poller.register(command.pidfd, select.POLLIN)
                wait = command.wait_seconds()
                if wait is not None:
                    timeout = wait if timeout is None else min(timeout, wait)
            try:
                ready = poller.poll(None if timeout is None else int(timeout * 1000) + 1)
            except InterruptedError:
                continue
            for fd, events in ready:
                if self.sock is not None and fd == self.sock.fileno():
                    if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        self.receive()
                elif fd in readers:
                    command = readers[fd]
                    if fd == command.pidfd:
                        command.check_exit()
                    elif fd in command.pipes:
                        command.read(fd)
            for command in [self.command] + self.draining if self.command else self.draining:
                command.check_exit()
            self.draining = [command for command in self.draining if command.lingers()]


def main():
    agent = Agent(sys.argv[1])
    while True:
        try:
            agent.run()
        except OSError as exc:  # never let the agent die over one bad moment
            if exc.errno not in (errno.EINTR, errno.EAGAIN):
                time.sleep(0.1)


if __name__ == "__main__":
    main()
