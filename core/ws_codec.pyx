# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""RFC 6455 frames, sans-I/O: the decoder of what a peer sends and the server's encoders.

Owns the WebSocket *frame* layer of the hot path (recv -> ``FrameDecoder.feed`` ->
handler -> ``text_frame``/``stamped_text_frame`` -> send). No I/O, no clock, no
extensions (a frame with an RSV bit set is a protocol error). The verdicts on what a peer
sends are wsproto 1.3's, checked by property tests with wsproto as the oracle; UTF-8 is
failed at the first byte that cannot continue, even ED A0-BF (a surrogate), where CPython's
incremental decoder, and so wsproto, waits for a third byte.

Costs:

* ``FrameDecoder.feed``: a frame that arrives whole in one call is unmasked straight from
  the caller's buffer into its payload ``bytes`` - per message one ``bytes``, one event
  tuple, plus the result list per call; nothing is copied into the decoder. Only what
  spans calls is kept: at most 14 header bytes, at most 125 bytes of a control frame
  (inline arrays of the decoder) and the unmasked payload of the unfinished data message,
  in a heap buffer that grows with the bytes that actually arrived (never with a length
  a peer merely announces) and is freed after a message larger than 4 KiB; such a message
  is copied once more, into its ``bytes``, when it completes. So a decoder holds at most
  ``max_message_size + 125`` bytes (``buffered``); a message over the limit is refused
  from its frame header, before its payload is read. An idle decoder is one object of
  272 bytes, with no heap buffer.
* Unmasking is 8 bytes per step (uint64 XOR); UTF-8 validation is a DFA with an ASCII
  fast path of 8 bytes per step, its state carried across fragments and calls.
* Every encoder returns one ``bytes`` built in one allocation (header + payload).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

import os

cdef enum:
    KEEP_BUFFER = 4096          # a message buffer larger than this is freed after use
    MAX_CONTROL = 125

cdef uint64_t HIGH_BITS = 0x8080808080808080ULL    # the top bit of each of 8 bytes


# ---------------------------------------------------------------------- UTF-8 DFA
#
# A byte-class DFA after Bjoern Hoehrmann's design. States are row offsets into
# _UTF8_NEXT (state * 12), so a step is one load: next = _UTF8_NEXT[state + class].
# It accepts exactly what Python's strict UTF-8 decoder accepts: no overlongs (C0, C1,
# E0 80-9F, F0 80-8F), no surrogates (ED A0-BF), nothing above U+10FFFF (F4 90-BF, F5-FF).

cdef enum:
    U_ACCEPT = 0
    U_REJECT = 12

# Byte classes: 0 ASCII; 1 continuation 80-8F; 9 continuation 90-9F; 7 continuation A0-BF;
# 8 never valid (C0, C1, F5-FF); 2 lead of 2 (C2-DF); 3 lead of 3 (E1-EC, EE-EF); 10 E0;
# 4 ED; 11 F0; 6 lead of 4 (F1-F3); 5 F4.
cdef unsigned char _UTF8_CLASS[256]
cdef unsigned char _UTF8_NEXT[9 * 12]


cdef void _build_utf8_dfa() noexcept:
    cdef int b, c, s
    # Row index -> state offset: 0 accept, 1 reject, 2 need 1 more, 3 need 2 more,
    # 4 after E0, 5 after ED, 6 after F0, 7 after F1-F3, 8 after F4.
    for b in range(256):
        if b < 0x80:
            c = 0
        elif b < 0x90:
            c = 1
        elif b < 0xA0:
            c = 9
        elif b < 0xC0:
            c = 7
        elif b < 0xC2:
            c = 8
        elif b < 0xE0:
            c = 2
        elif b == 0xE0:
            c = 10
        elif b == 0xED:
            c = 4
        elif b < 0xF0:
            c = 3
        elif b == 0xF0:
            c = 11
        elif b < 0xF4:
            c = 6
        elif b == 0xF4:
            c = 5
        else:
            c = 8
        _UTF8_CLASS[b] = <unsigned char>c
    for s in range(9 * 12):
        _UTF8_NEXT[s] = U_REJECT
    # from accept
    _UTF8_NEXT[0 * 12 + 0] = 0 * 12
    _UTF8_NEXT[0 * 12 + 2] = 2 * 12
    _UTF8_NEXT[0 * 12 + 3] = 3 * 12
    _UTF8_NEXT[0 * 12 + 10] = 4 * 12
    _UTF8_NEXT[0 * 12 + 4] = 5 * 12
    _UTF8_NEXT[0 * 12 + 11] = 6 * 12
    _UTF8_NEXT[0 * 12 + 6] = 7 * 12
    _UTF8_NEXT[0 * 12 + 5] = 8 * 12
    for c in (1, 7, 9):
        _UTF8_NEXT[2 * 12 + c] = 0 * 12     # last continuation
        _UTF8_NEXT[3 * 12 + c] = 2 * 12
        _UTF8_NEXT[7 * 12 + c] = 3 * 12
    _UTF8_NEXT[4 * 12 + 7] = 2 * 12         # E0 A0-BF
    _UTF8_NEXT[5 * 12 + 1] = 2 * 12         # ED 80-9F
    _UTF8_NEXT[5 * 12 + 9] = 2 * 12
    _UTF8_NEXT[6 * 12 + 9] = 3 * 12         # F0 90-BF
    _UTF8_NEXT[6 * 12 + 7] = 3 * 12
    _UTF8_NEXT[8 * 12 + 1] = 3 * 12         # F4 80-8F


_build_utf8_dfa()


cdef inline uint32_t _utf8_run(uint32_t state, const unsigned char *s, Py_ssize_t n) noexcept nogil:
    """Advance the DFA over ``s[:n]``; U_REJECT as soon as a byte cannot continue."""
    cdef Py_ssize_t i = 0
    cdef uint64_t w
    while i < n:
        if state == U_ACCEPT:
            while i + 8 <= n:
                memcpy(&w, s + i, 8)
                if w & HIGH_BITS:
                    break
                i += 8
            while i < n and s[i] < 0x80:
                i += 1
            if i >= n:
                break
        state = _UTF8_NEXT[state + _UTF8_CLASS[s[i]]]
        if state == U_REJECT:
            return U_REJECT
        i += 1
    return state


# ---------------------------------------------------------------------- masking


cdef inline uint32_t _unmask(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
                             const unsigned char *key, uint32_t phase) noexcept nogil:
    """dst[i] = src[i] ^ key[(phase + i) % 4]; returns the phase after ``n`` bytes."""
    cdef unsigned char k8[8]
    cdef uint64_t k64, w0, w1
    cdef Py_ssize_t i = 0
    cdef int j
    for j in range(8):
        k8[j] = key[(phase + j) & 3]
    memcpy(&k64, k8, 8)
    while i + 16 <= n:
        memcpy(&w0, src + i, 8)
        memcpy(&w1, src + i + 8, 8)
        w0 ^= k64
        w1 ^= k64
        memcpy(dst + i, &w0, 8)
        memcpy(dst + i + 8, &w1, 8)
        i += 16
    if i + 8 <= n:
        memcpy(&w0, src + i, 8)
        w0 ^= k64
        memcpy(dst + i, &w0, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ k8[i & 7]   # i % 8 keeps i % 4, so k8 still lines up
        i += 1
    return <uint32_t>((phase + <uint64_t>n) & 3)


cdef inline bint _peer_close_code_ok(unsigned int code) noexcept:
    # wsproto 1.3: 1000-2999 only if a defined code that may be sent; 3000-4999 all.
    if 3000 <= code <= 4999:
        return True
    return (1000 <= code <= 1003) or (1007 <= code <= 1013)


# ---------------------------------------------------------------------- decoder


cdef class FrameDecoder:
    """Decodes the frames a peer sent into whole messages, control frames and verdicts.

    Args:
        max_message_size: bound on a data message (sum of its fragments' payloads);
            a larger one is refused with 1009 from its frame header, so the decoder never
            buffers more than ``max_message_size + 125`` bytes. ``<= 0``: no limit (then
            a peer can make it buffer whatever it sends).
        client_side: False (server, default) requires every frame masked; True (a client
            decoding a server) requires every frame unmasked. Else 1002.
    """

    def __cinit__(self):
        self._msg = NULL
        self._msg_cap = 0

    def __init__(self, *, Py_ssize_t max_message_size=65536, bint client_side=False):
        self.max_message_size = max_message_size
        self.client_side = client_side
        self._finished = False
        self._head_len = 0
        self._in_payload = False
        self._ctrl_len = 0
        self._msg_opcode = 0
        self._fragmented = False
        self._msg_len = 0
        self._utf8 = U_ACCEPT

    def __dealloc__(self):
        free(self._msg)

    @property
    def finished(self):
        """True once a close frame or a violation was reported: input is then ignored."""
        return self._finished

    @property
    def buffered(self):
        """Bytes held: a partial header or control payload plus the unfinished message."""
        return self._head_len + self._ctrl_len + self._msg_len

    @property
    def in_message(self):
        """True while a fragmented message is in progress (a frame without FIN arrived)."""
        return self._fragmented

    cpdef list feed(self, data):
        """Decode ``data`` (any bytes-like); return the events it completed, in wire order."""
        cdef list events = []
        cdef Py_buffer view
        if self._finished:
            return events
        if PyBytes_CheckExact(data):
            self.feed_into(<const unsigned char *>PyBytes_AS_STRING(data),
                           PyBytes_GET_SIZE(data), events)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self.feed_into(<const unsigned char *>view.buf, view.len, events)
            finally:
                PyBuffer_Release(&view)
        return events

    cdef int feed_into(self, const unsigned char *data, Py_ssize_t n, list events) except -1:
        """Like ``feed`` on a raw buffer, appending to ``events`` (for Cython callers)."""
        cdef const unsigned char *p = data
        cdef const unsigned char *end = data + n
        cdef Py_ssize_t r, take, avail
        cdef bytes payload
        if self._finished:
            return 0
        while True:
            if not self._in_payload:
                if p >= end:
                    return 0
                if self._head_len == 0 and end - p >= 2:
                    # The usual case: parse the header straight from the caller's buffer.
                    r = self._header(p, end - p, events)
                    if r < 0:
                        return 0
                    if r == 0:
                        memcpy(self._head, p, end - p)  # < 14 bytes, all of this call
                        self._head_len = end - p
                        return 0
                    p += r
                else:
                    while self._head_len < 2 and p < end:
                        self._head[self._head_len] = p[0]
                        self._head_len += 1
                        p += 1
                    if self._head_len < 2:
                        return 0
                    r = 6 if self._head[1] & 0x80 else 2
                    if (self._head[1] & 0x7F) == 126:
                        r += 2
                    elif (self._head[1] & 0x7F) == 127:
                        r += 8
                    take = min(r - self._head_len, end - p)
                    memcpy(self._head + self._head_len, p, take)
                    self._head_len += take
                    p += take
                    r = self._header(self._head, self._head_len, events)
                    if r <= 0:
                        return 0
                    self._head_len = 0
            # The payload of the current frame (possibly empty).
            avail = end - p
            if self._opcode >= 8:
                if self._ctrl_len == 0 and <uint64_t>avail >= self._remaining:
                    r = <Py_ssize_t>self._remaining
                    if self._opcode == OP_CLOSE:
                        if self._masked:
                            _unmask(self._ctrl, p, r, self._key, 0)
                            self._control_done(self._ctrl, r, events)
                        else:
                            self._control_done(p, r, events)
                    else:
                        payload = PyBytes_FromStringAndSize(NULL, r)
                        if self._masked:
                            _unmask(<unsigned char *>PyBytes_AS_STRING(payload), p, r,
                                    self._key, 0)
                        elif r:
                            memcpy(PyBytes_AS_STRING(payload), p, r)
                        events.append((self._opcode, payload))
                    p += r
                    self._in_payload = False
                else:
                    take = <Py_ssize_t>min(self._remaining, <uint64_t>avail)
                    if self._masked:
                        self._phase = _unmask(self._ctrl + self._ctrl_len, p, take,
                                              self._key, self._phase)
                    else:
                        memcpy(self._ctrl + self._ctrl_len, p, take)
                    self._ctrl_len += take
                    self._remaining -= <uint64_t>take
                    p += take
                    if self._remaining:
                        return 0
                    self._in_payload = False
                    take = self._ctrl_len
                    self._ctrl_len = 0
                    self._control_done(self._ctrl, take, events)
                if self._finished:
                    return 0
            else:
                if (self._fin and self._msg_len == 0
                        and <uint64_t>avail >= self._remaining):
                    # A whole message in this call: unmask into its bytes, no copy.
                    r = <Py_ssize_t>self._remaining
                    payload = PyBytes_FromStringAndSize(NULL, r)
                    if self._masked:
                        _unmask(<unsigned char *>PyBytes_AS_STRING(payload), p, r,
                                self._key, self._phase)
                    elif r:
                        memcpy(PyBytes_AS_STRING(payload), p, r)
                    if self._msg_opcode == OP_TEXT:
                        if _utf8_run(self._utf8, <const unsigned char *>
                                     PyBytes_AS_STRING(payload), r) != U_ACCEPT:
                            self._violation(1007, "invalid UTF-8 in text message", events)
                            return 0
                    events.append((self._msg_opcode, payload))
                    p += r
                    self._in_payload = False
                    self._end_message()
                else:
                    take = <Py_ssize_t>min(self._remaining, <uint64_t>avail)
                    self._data(p, take, events)
                    if self._finished:
                        return 0
                    p += take
                    if self._remaining:
                        return 0
                    self._in_payload = False
                    if self._fin:
                        if self._msg_opcode == OP_TEXT and self._utf8 != U_ACCEPT:
                            self._violation(1007, "invalid UTF-8 in text message", events)
                            return 0
                        events.append((self._msg_opcode,
                                       PyBytes_FromStringAndSize(<char *>self._msg,
                                                                 self._msg_len)))
                        self._end_message()

    cdef Py_ssize_t _header(self, const unsigned char *h, Py_ssize_t n, list events) except -2:
        """Check the header in ``h[:n]`` (n >= 2) as far as it goes.

        Returns its size once complete (and enters its payload), 0 when more bytes are
        needed, -1 after reporting a violation. Every check is made as soon as its bytes
        are there, so a bad frame is refused before its payload arrives.
        """
        cdef unsigned char b0 = h[0], b1 = h[1]
        cdef int opcode = b0 & 0x0F
        cdef bint fin = (b0 & 0x80) != 0
        cdef bint masked = (b1 & 0x80) != 0
        cdef Py_ssize_t size = 2
        cdef uint64_t length = b1 & 0x7F
        cdef uint64_t total
        cdef int i
        if (3 <= opcode <= 7) or opcode >= 11:
            return self._violation(1002, f"reserved opcode {opcode}", events)
        if opcode >= 8:
            if not fin:
                return self._violation(1002, "fragmented control frame", events)
            if length > MAX_CONTROL:
                return self._violation(1002, "control frame payload over 125 bytes", events)
        if b0 & 0x70:
            return self._violation(1002, "reserved bit set (no extension)", events)
        if masked and self.client_side:
            return self._violation(1002, "masked frame from server", events)
        if not masked and not self.client_side:
            return self._violation(1002, "frame not masked", events)
        if opcode == OP_CONT and self._msg_opcode == 0:
            return self._violation(1002, "continuation without a message", events)
        if (opcode == OP_TEXT or opcode == OP_BINARY) and self._msg_opcode != 0:
            return self._violation(1002, "new message inside a fragmented one", events)
        if length == 126:
            size = 4
            if n < size:
                return 0
            length = (<uint64_t>h[2] << 8) | h[3]
            if length <= 125:
                return self._violation(1002, "16-bit length for under 126 bytes", events)
        elif length == 127:
            size = 10
            if n < size:
                return 0
            length = 0
            for i in range(2, 10):
                length = (length << 8) | h[i]
            if length >> 63:
                return self._violation(1002, "64-bit length with the high bit set", events)
            if length <= 0xFFFF:
                return self._violation(1002, "64-bit length for under 65536 bytes", events)
        if opcode < 8 and self.max_message_size > 0:
            total = <uint64_t>self._msg_len + length
            if total > <uint64_t>self.max_message_size:
                return self._violation(1009, _too_big(total, self.max_message_size), events)
        if masked:
            size += 4
            if n < size:
                return 0
            memcpy(self._key, h + size - 4, 4)
        self._in_payload = True
        self._opcode = opcode
        self._fin = fin
        self._masked = masked
        self._phase = 0
        self._remaining = length
        if opcode == OP_TEXT or opcode == OP_BINARY:
            self._msg_opcode = opcode
            self._utf8 = U_ACCEPT
        if opcode < 8 and not fin:
            self._fragmented = True
        return size

    cdef int _data(self, const unsigned char *p, Py_ssize_t n, list events) except -1:
        """Append ``n`` payload bytes of a data frame to the message, unmasked and checked."""
        cdef unsigned char *dst
        if n == 0:
            return 0
        self._reserve(self._msg_len + n)
        dst = self._msg + self._msg_len
        if self._masked:
            self._phase = _unmask(dst, p, n, self._key, self._phase)
        else:
            memcpy(dst, p, n)
        self._msg_len += n
        self._remaining -= <uint64_t>n
        if self._msg_opcode == OP_TEXT:
            self._utf8 = _utf8_run(self._utf8, dst, n)
            if self._utf8 == U_REJECT:
                self._violation(1007, "invalid UTF-8 in text message", events)
        return 0

    cdef int _control_done(self, const unsigned char *payload, Py_ssize_t n,
                           list events) except -1:
        """Report a complete (unmasked) control frame."""
        cdef unsigned int code
        if self._opcode != OP_CLOSE:
            events.append((self._opcode, PyBytes_FromStringAndSize(<char *>payload, n)))
            return 0
        if n == 0:
            events.append((OP_CLOSE, (1005, "")))
        elif n == 1:
            self._violation(1002, "close frame with a 1-byte payload", events)
            return 0
        else:
            code = (<unsigned int>payload[0] << 8) | payload[1]
            if not _peer_close_code_ok(code):
                self._violation(1002, f"close code {code} not allowed", events)
                return 0
            if _utf8_run(U_ACCEPT, payload + 2, n - 2) != U_ACCEPT:
                self._violation(1007, "invalid UTF-8 in close reason", events)
                return 0
            events.append((OP_CLOSE, (code, PyUnicode_DecodeUTF8(<char *>payload + 2,
                                                                n - 2, NULL))))
        self._finish()
        return 0

    cdef int _reserve(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap
        cdef void *mem
        if need <= self._msg_cap:
            return 0
        cap = max(need, 2 * self._msg_cap, 256)
        if self.max_message_size > 0 and cap > self.max_message_size:
            cap = max(need, self.max_message_size)
        mem = realloc(self._msg, cap)
        if mem == NULL:
            raise MemoryError()
        self._msg = <unsigned char *>mem
        self._msg_cap = cap
        return 0

    cdef void _end_message(self) noexcept:
        self._msg_opcode = 0
        self._fragmented = False
        self._msg_len = 0
        if self._msg_cap > KEEP_BUFFER:
            free(self._msg)
            self._msg = NULL
            self._msg_cap = 0

    cdef Py_ssize_t _violation(self, int code, str reason, list events) except -2:
        """Report that the peer broke the protocol; the decoder is finished. Returns -1."""
        events.append((VIOLATION, (code, reason)))
        self._finish()
        return -1

    cdef void _finish(self) noexcept:
        self._finished = True
        self._in_payload = False
        self._head_len = 0
        self._ctrl_len = 0
        self._msg_len = 0
        self._fragmented = False
        free(self._msg)
        self._msg = NULL
        self._msg_cap = 0


cdef str _too_big(uint64_t total, Py_ssize_t limit):
    cdef str reason = f"message of {total} bytes exceeds {limit}"
    if len(reason) > 60:
        reason = f"message exceeds {limit} bytes"
    return reason


# ---------------------------------------------------------------------- encoders


cdef bytes _frame(unsigned char first_byte, const unsigned char *payload, Py_ssize_t n,
                  bint masked, uint32_t key):
    cdef Py_ssize_t head = 2
    cdef bytes out
    cdef unsigned char *o
    cdef unsigned char k[4]
    cdef int i
    if n > 0xFFFF:
        head = 10
    elif n > 125:
        head = 4
    if masked:
        head += 4
    out = PyBytes_FromStringAndSize(NULL, head + n)
    o = <unsigned char *>PyBytes_AS_STRING(out)
    o[0] = first_byte
    if n > 0xFFFF:
        o[1] = 127
        for i in range(8):
            o[2 + i] = <unsigned char>((<uint64_t>n >> (56 - 8 * i)) & 0xFF)
    elif n > 125:
        o[1] = 126
        o[2] = <unsigned char>(n >> 8)
        o[3] = <unsigned char>(n & 0xFF)
    else:
        o[1] = <unsigned char>n
    if masked:
        o[1] |= 0x80
        memcpy(k, &key, 4)
        memcpy(o + head - 4, k, 4)
        _unmask(o + head, payload, n, k, 0)
    elif n:
        memcpy(o + head, payload, n)
    return out


cdef bytes _frame_of(unsigned char first_byte, object payload, bint masked, uint32_t key,
                     bint control):
    """``_frame`` from any bytes-like ``payload``."""
    cdef Py_buffer view
    if PyBytes_CheckExact(payload):
        if control and PyBytes_GET_SIZE(payload) > MAX_CONTROL:
            raise ValueError("control frame payload over 125 bytes")
        return _frame(first_byte, <const unsigned char *>PyBytes_AS_STRING(payload),
                      PyBytes_GET_SIZE(payload), masked, key)
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        if control and view.len > MAX_CONTROL:
            raise ValueError("control frame payload over 125 bytes")
        return _frame(first_byte, <const unsigned char *>view.buf, view.len, masked, key)
    finally:
        PyBuffer_Release(&view)


cdef bytes _close_payload(int code, str reason):
    cdef bytes raw
    cdef const unsigned char *r
    cdef Py_ssize_t n
    cdef unsigned char *o
    cdef bytes out
    if code < 1000 or code > 4999 or code == 1005 or code == 1006 or code == 1015:
        raise ValueError(f"close code {code} cannot be sent")
    if reason is None:
        raise TypeError("reason must be a str")
    raw = PyUnicode_AsUTF8String(reason)
    r = <const unsigned char *>PyBytes_AS_STRING(raw)
    n = PyBytes_GET_SIZE(raw)
    if n > MAX_CONTROL - 2:
        n = MAX_CONTROL - 2
        while n > 0 and (r[n] & 0xC0) == 0x80:   # back off to a character's first byte
            n -= 1
    out = PyBytes_FromStringAndSize(NULL, n + 2)
    o = <unsigned char *>PyBytes_AS_STRING(out)
    o[0] = <unsigned char>(code >> 8)
    o[1] = <unsigned char>(code & 0xFF)
    memcpy(o + 2, r, n)
    return out


cdef inline void _check_opcode(int opcode) except *:
    if opcode < 0 or (3 <= opcode <= 7) or opcode > 10:
        raise ValueError(f"opcode {opcode} is not a WebSocket opcode")


cpdef bytes encode_frame(int opcode, payload):
    """A server frame (FIN, unmasked) with ``opcode`` and ``payload`` (bytes-like)."""
    _check_opcode(opcode)
    return _frame_of(<unsigned char>(0x80 | opcode), payload, False, 0, opcode >= 8)


cpdef bytes text_frame(payload):
    """A server text frame; ``payload`` is UTF-8 bytes (not re-validated)."""
    return _frame_of(0x80 | OP_TEXT, payload, False, 0, False)


cpdef bytes binary_frame(payload):
    """A server binary frame."""
    return _frame_of(0x80 | OP_BINARY, payload, False, 0, False)


cpdef bytes ping_frame(payload=b""):
    """A server ping; ValueError when ``payload`` is over 125 bytes."""
    return _frame_of(0x80 | OP_PING, payload, False, 0, True)


cpdef bytes pong_frame(payload=b""):
    """A server pong; ValueError when ``payload`` is over 125 bytes."""
    return _frame_of(0x80 | OP_PONG, payload, False, 0, True)


cpdef bytes close_frame(int code, str reason=""):
    """A server close frame; ``reason`` is cut at a character boundary to fit 125 bytes."""
    cdef bytes payload = _close_payload(code, reason)
    return _frame(0x80 | OP_CLOSE, <const unsigned char *>PyBytes_AS_STRING(payload),
                  PyBytes_GET_SIZE(payload), False, 0)


cpdef bytes stamped_text_frame(bytes body, long long seq):
    """The text frame of JSON object ``body`` with ``"seq":seq`` appended, one allocation."""
    cdef const unsigned char *b
    cdef Py_ssize_t blen, n, head, keep, i, nd = 0
    cdef unsigned char digits[24]
    cdef unsigned long long v
    cdef bint empty
    cdef bytes out
    cdef unsigned char *o
    if body is None:
        raise TypeError("body must be bytes")
    b = <const unsigned char *>PyBytes_AS_STRING(body)
    blen = PyBytes_GET_SIZE(body)
    if blen < 2 or b[0] != ord("{") or b[blen - 1] != ord("}"):
        raise ValueError("body must be a JSON object")
    v = <unsigned long long>seq if seq >= 0 else <unsigned long long>0 - <unsigned long long>seq
    while True:
        digits[nd] = <unsigned char>(48 + v % 10)
        nd += 1
        v //= 10
        if v == 0:
            break
    if seq < 0:
        digits[nd] = ord("-")
        nd += 1
    empty = blen == 2
    keep = blen - 1                       # everything but the closing brace
    n = keep + (6 if empty else 7) + nd + 1
    head = 2 if n <= 125 else (4 if n <= 0xFFFF else 10)
    out = PyBytes_FromStringAndSize(NULL, head + n)
    o = <unsigned char *>PyBytes_AS_STRING(out)
    o[0] = 0x80 | OP_TEXT
    if head == 2:
        o[1] = <unsigned char>n
    elif head == 4:
        o[1] = 126
        o[2] = <unsigned char>(n >> 8)
        o[3] = <unsigned char>(n & 0xFF)
    else:
        o[1] = 127
        for i in range(8):
            o[2 + i] = <unsigned char>((<uint64_t>n >> (56 - 8 * i)) & 0xFF)
    o += head
    memcpy(o, b, keep)
    o += keep
    if empty:
        memcpy(o, b'"seq":', 6)
        o += 6
    else:
        memcpy(o, b',"seq":', 7)
        o += 7
    for i in range(nd):
        o[i] = digits[nd - 1 - i]
    o[nd] = ord("}")
    return out


# ---------------------------------------------------------------------- client side


cdef class FrameEncoder:
    """Builds client frames (for test and benchmark clients), masked by default.

    ``frame`` is a raw builder: it enforces nothing but ``0 <= opcode <= 15``, so a test
    can build protocol violations too. Masking keys come from xorshift64* seeded from
    ``os.urandom``: fresh per frame, fast, not a cryptographic secret.
    """

    def __init__(self, bint mask=True):
        self.mask = mask
        self._rng = 0
        while self._rng == 0:
            self._rng = int.from_bytes(os.urandom(8), "little")

    cdef uint32_t _next_key(self) noexcept:
        cdef uint64_t x = self._rng
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self._rng = x
        return <uint32_t>((x * <uint64_t>0x2545F4914F6CDD1D) >> 32)

    cpdef bytes frame(self, int opcode, payload, bint fin=True, bint rsv1=False):
        """One frame of ``payload`` (bytes-like); FIN and RSV1 as given."""
        if opcode < 0 or opcode > 15:
            raise ValueError(f"opcode {opcode} does not fit 4 bits")
        return _frame_of(<unsigned char>((0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode),
                         payload, self.mask, self._next_key() if self.mask else 0, False)

    cpdef bytes close(self, int code, str reason=""):
        """A close frame (masked when ``mask``); same rules as ``close_frame``."""
        cdef bytes payload = _close_payload(code, reason)
        return _frame(0x80 | OP_CLOSE, <const unsigned char *>PyBytes_AS_STRING(payload),
                      PyBytes_GET_SIZE(payload), self.mask,
                      self._next_key() if self.mask else 0)
