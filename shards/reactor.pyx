# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""One reactor per shard: every open connection's frames, on one trio task.

The reactor owns a private, level-triggered epoll holding the socket of every connection
past its handshake, and awaits it with ``trio.lowlevel.wait_readable(epoll_fd)``. On each
wake it takes a bounded batch of ready sockets (``READ_BATCH``, 256): ``recv`` into one
shared buffer -> the Cython frame decoder (``core.ws_codec``) -> a touch of the heartbeat
wheel -> the connection's handler (per-message rules and the app, synchronous; ``--app
echo`` is answered here without a call) -> replies queued on the connection. Then it writes
the connections with queued frames (``FLUSH_BATCH``, 512 of them, one ``writev`` each) and
yields to trio, so the heartbeat, control-channel, accept and drain tasks get their turn
between batches. One batch is bounded by those two counts (a few ms of CPU at most): a
10,000-recipient broadcast is written over ~20 batches and never stalls an echo for more
than one. The system calls are made from C (``recv``, ``writev``, ``epoll_wait``): per
message that is 2 system calls and no task switch, as in picows.

A connection whose kernel buffer is full keeps its pending frames (``Link.out``) and is
watched for ``EPOLLOUT``; pending bytes over ``max_out`` (``--max-outbound-bytes``) make it a
slow consumer: its queued frames are dropped and it is closed 1008 (the close frame goes
after whatever frame was half-written, if the client ever reads again).

Closing follows RFC 6455 7.1: the side that closes sends a close frame; the server then
shuts down its write side (FIN after the close frame, so the frame is on the wire before
the TCP connection ends) and reads until the client's close frame or EOF - a socket closed
with unread input would send a RST that can destroy the close frame in flight. The
connection's own task bounds that wait (``--close-timeout``) and closes the socket: the
reactor never closes a file descriptor, it only unregisters it and sets ``Link.wakeup``.

Every per-connection step is guarded: an exception ends that connection with 1011, is
logged once with its traceback and counted (``ws_connection_errors_total``); the reactor
goes on. Memory: a ``Link`` is ~300 bytes plus its decoder (272) and pending output.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc

from core.heartbeat_wheel cimport HeartbeatWheel
from core.ws_codec cimport (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    binary_frame,
    close_frame,
    ping_frame,
    pong_frame,
    stamped_text_frame,
    text_frame,
)

import os
import traceback
from collections import deque

import trio

from core.close_codes import CloseCode, How
from shards import stats
from shards.log import log


cdef extern from "<sys/types.h>":
    ctypedef long ssize_t

cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_recv "recv"(int fd, void *buf, size_t n, int flags)
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags)
    int c_shutdown "shutdown"(int fd, int how)
    int MSG_NOSIGNAL
    int SHUT_WR

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t c_writev "writev"(int fd, const iovec *iov, int iovcnt)

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        int fd
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    int EPOLLIN, EPOLLOUT, EPOLLHUP, EPOLLERR, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL
    int EPOLL_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)


READ_BATCH = 256  # ready sockets handled per wake
FLUSH_BATCH = 512  # connections written per wake
RECV_SIZE = 256 * 1024  # one shared receive buffer; a read takes at most this
MAX_IOV = 64  # frames per writev
LAZY_OVERHEAD = 24  # budget bytes of a lazily stamped frame besides its body
PING_PAYLOAD = b"hb"
cdef bytes PING_FRAME = ping_frame(PING_PAYLOAD)  # built once: every ping is the same bytes

cdef int C_READ_BATCH = 256
cdef int C_FLUSH_BATCH = 512
cdef Py_ssize_t C_RECV_SIZE = 256 * 1024
cdef int C_MAX_IOV = 64
cdef Py_ssize_t C_LAZY = 24

# Link states
cdef enum:
    S_OPEN = 0
    S_CLOSING = 1  # a close frame was sent or received; waiting for the other side
    S_ENDED = 2  # unregistered: the connection's task closes the socket

OPEN = S_OPEN
CLOSING = S_CLOSING
ENDED = S_ENDED

_current_time = trio.current_time
_POLICY = int(CloseCode.POLICY_VIOLATION)
_INTERNAL = int(CloseCode.INTERNAL_ERROR)
_NORMAL = int(CloseCode.NORMAL)
_NO_STATUS = int(CloseCode.NO_STATUS)
_RATE = "message rate limit"


cdef class Link:
    """One connection's socket as the reactor sees it: decoder, rate bucket, pending
    output, state. ``how``/``code``/``reason`` say how it ended once it ends (or is
    ending): who closed, with what close code (None: no close frame, e.g. a lost
    connection). ``handler`` gets every data frame: ``on_data(link, payload, text, now)``;
    None answers each frame with itself (``--app echo``).

    The rate bucket (``take``) is the connection's: ``rate`` messages per second on average,
    ``burst`` at once (``core.rate_limit``'s rule, kept here to save an object per
    connection)."""

    cdef public object sock
    cdef readonly int fd
    cdef Reactor reactor
    cdef FrameDecoder decoder
    cdef public object handler
    cdef public int slot
    cdef object out  # None, or a deque of bytes / (JSON body, seq) stamped when written
    cdef public Py_ssize_t out_bytes
    cdef public Py_ssize_t max_out
    cdef int _state
    cdef bint watching_out
    cdef bint scheduled
    cdef bint shut
    cdef bint close_queued
    cdef bint awaiting_pong
    cdef bint partial  # out[0] is the rest of a frame that was partly written
    cdef public bint paused  # not read for now (its unit is moving to another shard)
    cdef public double opened
    cdef public object how
    cdef public object code
    cdef public str reason
    cdef public object silent_s
    # Set when a close starts (either side) and again when the link ends: the
    # connection's task bounds the close with --close-timeout, then closes the socket.
    cdef public object wakeup
    cdef double rate
    cdef double burst
    cdef double tokens
    cdef double tokens_at

    def __init__(
        self,
        Reactor reactor,
        sock,
        *,
        int slot,
        Py_ssize_t max_message_size,
        Py_ssize_t max_out,
        double rate,
        double burst,
        double now,
    ):
        self.sock = sock
        self.fd = sock.fileno()
        self.reactor = reactor
        self.decoder = FrameDecoder(max_message_size=max_message_size)
        self.handler = None
        self.slot = slot
        self.out = None  # a deque once something waits for the kernel (most links never)
        self.out_bytes = 0
        self.max_out = max_out
        self._state = S_OPEN
        self.paused = False
        self.opened = now
        self.how = None
        self.code = None
        self.reason = ""
        self.silent_s = None
        self.wakeup = trio.Event()
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.tokens_at = now

    # ------------------------------------------------------------------ state
    @property
    def state(self):
        return self._state

    @property
    def closing(self):
        """True from the start of a close (either side) on."""
        return self._state != S_OPEN

    @property
    def ended(self):
        return self._state == S_ENDED

    def age(self):
        return _current_time() - self.opened

    cpdef bint take(self, double now, double cost=1.0):
        """Spend ``cost`` of the rate bucket at ``now``; False when over the rate."""
        cdef double tokens
        if now > self.tokens_at:
            tokens = self.tokens + (now - self.tokens_at) * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.tokens_at = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    # ------------------------------------------------------------------ output
    cpdef bint send(self, bytes frame):
        """Queue one complete data frame (written at once when nothing is pending); False
        once the connection is closing or it just overflowed (a slow consumer)."""
        if self._state != S_OPEN:
            return False
        stats.messages_out += 1
        return self._push(frame)

    cdef bint _push(self, bytes frame):
        cdef Py_ssize_t size = PyBytes_GET_SIZE(frame)
        cdef ssize_t sent
        if not self.out and not self.reactor.batching and not self.reactor.deferred:
            sent = c_send(self.fd, PyBytes_AS_STRING(frame), size, MSG_NOSIGNAL)
            if sent < 0:
                if errno != EAGAIN and errno != EINTR:
                    self.lost()
                    return False
                sent = 0
            if sent == size:
                return True
            if sent:
                frame = frame[sent:]
                size -= sent
                self.partial = True
        self._queue(frame)
        self.out_bytes += size
        if self.out_bytes > self.max_out:
            self.overflow()
            return False
        self.reactor.schedule(self)
        return True

    cpdef bint send_stamped(self, bytes body, long long seq):
        """Queue a JSON stream body to be stamped with ``seq`` when it is written (a
        broadcast's body is shared by every recipient's queue until then)."""
        if self._state != S_OPEN:
            return False
        stats.messages_out += 1
        self._queue((body, seq))
        self.out_bytes += PyBytes_GET_SIZE(body) + C_LAZY
        if self.out_bytes > self.max_out:
            self.overflow()
            return False
        self.reactor.schedule(self)
        return True

    cpdef ping(self):
        """A WebSocket ping, queued behind any pending output: a client that is reading a
        backlog answers once it reaches the ping (within the timeout, or it is judged
        silent). Never skipped: an idle client that got no ping would have nothing to
        answer and be closed as a zombie while it was reading."""
        if self._state == S_OPEN:
            self.awaiting_pong = True
            self._push(PING_FRAME)

    def pause(self, bint paused):
        """Stop (or resume) reading this connection: what it sends waits in the kernel."""
        if self.paused != paused and self._state != S_ENDED:
            self.paused = paused
            self.reactor.update(self)

    # ------------------------------------------------------------------ ending
    cpdef close(self, int code, str reason):
        """Close with ``code`` after the frames already queued (RFC 6455 7.1.2)."""
        if self._state != S_OPEN:
            return
        self.how, self.code, self.reason = How.SERVER_CLOSED, code, reason
        self._queue_close(code, reason)

    cpdef overflow(self):
        """Pending output over budget: drop what was not started, close 1008."""
        if self._state != S_OPEN:
            return
        self.how, self.code, self.reason = How.SERVER_CLOSED, _POLICY, "slow consumer"
        kept = self.out[0] if self.partial and self.out else None
        self.out = None
        self.out_bytes = 0
        if kept is not None:
            self._queue(kept)
            self.out_bytes = len(kept)
        self._queue_close(_POLICY, self.reason)

    cdef inline _queue(self, item):
        if self.out is None:
            self.out = deque()
        self.out.append(item)

    cdef _queue_close(self, int code, str reason):
        self._state = S_CLOSING
        frame = close_frame(code, reason)
        self._queue(frame)
        self.out_bytes += PyBytes_GET_SIZE(frame)
        self.close_queued = True
        self.reactor.schedule(self)
        self.wakeup.set()

    cpdef abort(self, how, str reason, code=None):
        """End now, without a close handshake (heartbeat expiry, a frozen peer, a drain's
        deadline). A close already in progress keeps its own ``how`` and code."""
        if self.how is None or self._state == S_OPEN:
            self.how, self.code, self.reason = how, code, reason
        self.reactor.end(self)

    cpdef expire(self, double silent_s):
        """The heartbeat wheel found this client silent past the timeout."""
        self.silent_s = silent_s
        self.abort(How.HEARTBEAT_EXPIRED, "heartbeat timeout")

    cpdef lost(self):
        """TCP ended or failed without a close handshake."""
        if self._state == S_OPEN:
            self.how, self.code, self.reason = How.CONNECTION_LOST, None, "connection lost"
        self.reactor.end(self)


cdef class Reactor:
    """The shard's reactor (see the module docstring). ``wheel`` is touched on every read;
    ``now`` is trio's clock, read once per batch."""

    cdef HeartbeatWheel wheel
    cdef public int shard_index
    cdef int _epfd
    cdef int _wakeup
    cdef dict _links
    cdef object _pending
    cdef public bint batching
    # --durability stream: nothing is written to a client outside a batch, and each batch's
    # writes wait until ``before_flush()`` (the session journal reaching the supervisor)
    # returns True.
    cdef public bint deferred
    cdef public object before_flush
    cdef bint _parked
    cdef bint _woken
    cdef unsigned char *_buf
    cdef epoll_event *_events
    cdef list _scratch

    def __cinit__(self):
        self._epfd = -1
        self._wakeup = -1
        self._buf = <unsigned char *>malloc(C_RECV_SIZE)
        self._events = <epoll_event *>malloc(sizeof(epoll_event) * C_READ_BATCH)
        if self._buf == NULL or self._events == NULL:
            raise MemoryError()

    def __init__(self, HeartbeatWheel wheel, int shard_index):
        cdef epoll_event ev
        self.wheel = wheel
        self.shard_index = shard_index
        self._links = {}
        self._pending = deque()
        self.deferred = False
        self.before_flush = None
        self._scratch = []
        self._epfd = epoll_create1(EPOLL_CLOEXEC)
        if self._epfd < 0:
            raise OSError(errno, os.strerror(errno))
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ev.events = EPOLLIN
        ev.data.fd = self._wakeup
        if epoll_ctl(self._epfd, EPOLL_CTL_ADD, self._wakeup, &ev) < 0:
            raise OSError(errno, os.strerror(errno))

    def __dealloc__(self):
        free(self._buf)
        free(self._events)
        if self._epfd >= 0:
            c_close(self._epfd)
        if self._wakeup >= 0:
            c_close(self._wakeup)
        self._epfd = self._wakeup = -1

    def close(self):
        if self._epfd >= 0:
            c_close(self._epfd)
        if self._wakeup >= 0:
            c_close(self._wakeup)
        self._epfd = self._wakeup = -1

    def __len__(self):
        return len(self._links)

    def fileno(self):
        return self._epfd

    # ------------------------------------------------------------------ membership
    cpdef add(self, Link link):
        """Start serving ``link`` (its socket must be nonblocking and released from trio's
        own epoll)."""
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.fd = link.fd
        if epoll_ctl(self._epfd, EPOLL_CTL_ADD, link.fd, &ev) < 0:
            raise OSError(errno, os.strerror(errno))
        self._links[link.fd] = link

    cpdef end(self, Link link):
        """Stop serving ``link`` and tell its task (which closes the socket)."""
        cdef epoll_event ev
        if link._state == S_ENDED:
            return
        link._state = S_ENDED
        if self._links.get(link.fd) is link:
            del self._links[link.fd]
            epoll_ctl(self._epfd, EPOLL_CTL_DEL, link.fd, &ev)
        link.out = None
        link.out_bytes = 0
        link.wakeup.set()

    cpdef update(self, Link link):
        """Re-arm ``link``'s epoll events from its state (reading unless paused, writing
        while output waits for the kernel)."""
        cdef epoll_event ev
        if link._state == S_ENDED:
            return
        ev.events = (0 if link.paused else EPOLLIN) | (EPOLLOUT if link.watching_out else 0)
        ev.data.fd = link.fd
        if epoll_ctl(self._epfd, EPOLL_CTL_MOD, link.fd, &ev) < 0:
            link.lost()

    def inject(self, Link link, bytes data):
        """Bytes that arrived with the request head (a client that did not wait for the
        ``101``): handled as if just read."""
        cdef double now = _current_time()
        try:
            self._consume(link, <const unsigned char *>PyBytes_AS_STRING(data), len(data), now)
        except Exception as exc:
            self._failed(link, exc)

    def wake(self):
        """Run a batch soon even if no socket is ready (the journal has entries)."""
        if self._parked and not self._woken:
            self._woken = True
            os.eventfd_write(self._wakeup, 1)

    # ------------------------------------------------------------------ output
    cpdef schedule(self, Link link):
        """``link`` has queued output: write it in the next batch."""
        if link.scheduled or link.watching_out:
            return
        link.scheduled = True
        self._pending.append(link)
        if self._parked and not self._woken:
            self._woken = True
            os.eventfd_write(self._wakeup, 1)

    cdef int _write(self, Link link) except -1:
        cdef iovec iov[64]
        cdef list frames = self._scratch
        cdef object out = link.out
        cdef int count, i, j
        cdef ssize_t sent
        cdef Py_ssize_t size
        cdef bytes frame
        while out:
            del frames[:]
            count = 0
            while out and count < C_MAX_IOV:
                item = out.popleft()
                if type(item) is bytes:
                    frame = <bytes>item
                    link.out_bytes -= PyBytes_GET_SIZE(frame)
                else:
                    frame = stamped_text_frame((<tuple>item)[0], (<tuple>item)[1])
                    link.out_bytes -= PyBytes_GET_SIZE((<tuple>item)[0]) + C_LAZY
                frames.append(frame)
                iov[count].iov_base = <void *>PyBytes_AS_STRING(frame)
                iov[count].iov_len = PyBytes_GET_SIZE(frame)
                count += 1
            if count == 1:
                sent = c_send(link.fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
            else:
                sent = c_writev(link.fd, iov, count)
            if sent < 0:
                if errno != EAGAIN and errno != EINTR:
                    link.lost()
                    return 0
                sent = 0
            for i in range(count):
                size = iov[i].iov_len
                if sent >= size:
                    sent -= size
                    link.partial = False
                    continue
                # The rest goes back to the head of the queue, in order: a partly written
                # frame first, as the bytes still to send.
                for j in range(count - 1, i, -1):
                    frame = frames[j]
                    out.appendleft(frame)
                    link.out_bytes += PyBytes_GET_SIZE(frame)
                frame = frames[i]
                if sent:
                    frame = frame[sent:]
                    link.partial = True
                out.appendleft(frame)
                link.out_bytes += PyBytes_GET_SIZE(frame)
                break
            if out:
                if not link.watching_out:
                    link.watching_out = True
                    self.update(link)
                del frames[:]
                return 0
        del frames[:]
        link.out = None  # drained: give the deque's memory back
        if link.watching_out:
            link.watching_out = False
            self.update(link)
        if link.close_queued and not link.shut:
            link.shut = True
            if c_shutdown(link.fd, SHUT_WR) < 0:
                link.lost()
                return 0
            if link.how is How.CLIENT_CLOSED:
                self.end(link)  # the client closed first: our reply is out, we are done
        return 0

    cdef int _flush(self) except -1:
        cdef Link link
        cdef int n = len(self._pending)
        if n > C_FLUSH_BATCH:
            n = C_FLUSH_BATCH
        for _ in range(n):
            link = <Link>self._pending.popleft()
            link.scheduled = False
            if link._state != S_ENDED and link.out:
                try:
                    self._write(link)
                except Exception as exc:
                    self._failed(link, exc)
        return 0

    # ------------------------------------------------------------------ input
    cdef int _read(self, Link link, double now) except -1:
        cdef ssize_t n = c_recv(link.fd, self._buf, C_RECV_SIZE, 0)
        if n < 0:
            if errno == EAGAIN or errno == EINTR:
                return 0
            link.lost()
            return 0
        if n == 0:
            if link._state == S_OPEN:
                link.lost()
            else:
                self.end(link)
            return 0
        self.wheel.touch(link.slot, now)
        return self._consume(link, self._buf, n, now)

    cdef int _consume(self, Link link, const unsigned char *data, Py_ssize_t n, double now) except -1:
        cdef list events = []
        cdef int kind
        cdef tuple event
        link.decoder.feed_into(data, n, events)
        for item in events:
            event = <tuple>item
            kind = event[0]
            if kind == OP_TEXT or kind == OP_BINARY:
                if link._state != S_OPEN:
                    continue  # closing: data after our close frame is discarded
                stats.messages_in += 1
                if link.handler is None:  # raw echo
                    if not link.take(now, 1.0):
                        link.close(_POLICY, _RATE)
                        return 0
                    if kind == OP_TEXT:
                        link.send(text_frame(event[1]))
                    else:
                        link.send(binary_frame(event[1]))
                else:
                    link.handler.on_data(link, event[1], kind == OP_TEXT, now)
            elif kind == OP_PING:
                if link._state == S_OPEN:
                    if not link.take(now, 1.0):
                        link.close(_POLICY, _RATE)
                        return 0
                    link._push(pong_frame(event[1]))
            elif kind == OP_PONG:
                if link.awaiting_pong:
                    link.awaiting_pong = False
                elif link._state == S_OPEN and not link.take(now, 1.0):
                    link.close(_POLICY, _RATE)
                    return 0
            elif kind == OP_CLOSE:
                self._peer_closed(link, event[1])
                return 0
            else:  # a protocol violation: (code, reason)
                code, reason = event[1]
                link.close(code, reason)
                return 0
            if link._state == S_ENDED:
                return 0
        return 0

    cdef _peer_closed(self, Link link, tuple value):
        code, reason = value
        if link._state == S_OPEN:
            link.how, link.code, link.reason = How.CLIENT_CLOSED, code, reason
            link._state = S_CLOSING
            reply = close_frame(_NORMAL if code == _NO_STATUS else code, "")
            link._queue(reply)
            link.out_bytes += len(reply)
            link.close_queued = True
            self.schedule(link)
            link.wakeup.set()
        else:
            self.end(link)  # the answer to our close: done

    cdef _failed(self, Link link, exc):
        stats.count("connection_error")
        log(
            "connection_error",
            shard=self.shard_index,
            error=repr(exc)[:200],
            traceback="".join(traceback.format_exception(exc))[-2000:],
        )
        if link._state == S_OPEN:
            link.close(_INTERNAL, "server error")
        else:
            self.end(link)

    # ------------------------------------------------------------------ the loop
    cpdef bint step(self) except *:
        """One batch: ready sockets read and handled, then queued output written.
        True when more work is waiting (do not park)."""
        cdef int n = epoll_wait(self._epfd, self._events, C_READ_BATCH, 0)
        cdef int i, fd
        cdef uint32_t mask
        cdef double now
        cdef Link link
        cdef uint64_t drained
        cdef list answered = None
        if n > 0:
            now = _current_time()
            self.batching = True
            try:
                for i in range(n):
                    fd = self._events[i].data.fd
                    mask = self._events[i].events
                    if fd == self._wakeup:
                        self._woken = False
                        try:
                            os.eventfd_read(self._wakeup)
                        except BlockingIOError:
                            pass
                        continue
                    obj = self._links.get(fd)
                    if obj is None:
                        continue
                    link = <Link>obj
                    try:
                        if mask & EPOLLOUT and link.watching_out:
                            self._write(link)
                        if mask & (EPOLLIN | EPOLLHUP | EPOLLERR) and link._state != S_ENDED:
                            self._read(link, now)
                            if link.out and not link.watching_out:
                                if answered is None:
                                    answered = []
                                answered.append(link)
                    except Exception as exc:
                        self._failed(link, exc)
            finally:
                self.batching = False
        if self.before_flush is not None and not self.before_flush():
            return True  # the journal is not in the kernel yet: no client write before it
        if answered is not None:
            # What this batch's input produced goes out now, ahead of a broadcast's backlog
            # (a say to 10,000 queues 10,000 links): an echo waits for one batch, not for
            # the whole fan-out. Per link the order is kept (its frames are one queue); the
            # link's place in the backlog finds nothing left to write.
            for link in answered:
                if link._state != S_ENDED and link.out and not link.watching_out:
                    try:
                        self._write(link)
                    except Exception as exc:
                        self._failed(link, exc)
        if self._pending:
            self._flush()
        return n == C_READ_BATCH or bool(self._pending)

    async def run(self):
        """Serve until cancelled."""
        wait_readable = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        epfd = self._epfd
        busy = False
        while True:
            if busy:
                await checkpoint()
            else:
                self._parked = True
                try:
                    await wait_readable(epfd)
                finally:
                    self._parked = False
            busy = self.step()
