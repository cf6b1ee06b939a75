# cython: language_level=3
"""Declarations of the RFC 6455 frame codec (see ws_codec.pyx), for ``cimport``."""

from libc.stdint cimport uint32_t, uint64_t

# Event kinds and opcodes: C constants here, plain Python ints in the module.
cpdef enum:
    OP_CONT = 0
    OP_TEXT = 1
    OP_BINARY = 2
    OP_CLOSE = 8
    OP_PING = 9
    OP_PONG = 10
    VIOLATION = -1


cdef class FrameDecoder:
    cdef readonly Py_ssize_t max_message_size   # <= 0: no limit
    cdef readonly bint client_side
    cdef bint _finished
    # a frame header split across feed() calls (at most 14 bytes)
    cdef unsigned char _head[14]
    cdef Py_ssize_t _head_len
    # the frame whose payload is arriving
    cdef bint _in_payload
    cdef int _opcode
    cdef bint _fin
    cdef bint _masked
    cdef unsigned char _key[4]
    cdef uint32_t _phase                        # key offset of the next payload byte
    cdef uint64_t _remaining                    # payload bytes still to come
    # a control frame's payload split across feed() calls
    cdef unsigned char _ctrl[125]
    cdef Py_ssize_t _ctrl_len
    # the data message in progress: its unmasked payload so far
    cdef int _msg_opcode                        # OP_TEXT, OP_BINARY, or 0 between messages
    cdef bint _fragmented                       # a frame without FIN has arrived
    cdef unsigned char *_msg
    cdef Py_ssize_t _msg_len
    cdef Py_ssize_t _msg_cap
    cdef uint32_t _utf8                         # DFA state, carried across fragments

    cpdef list feed(self, data)
    cdef int feed_into(self, const unsigned char *data, Py_ssize_t n, list events) except -1
    cdef Py_ssize_t _header(self, const unsigned char *h, Py_ssize_t n, list events) except -2
    cdef int _data(self, const unsigned char *p, Py_ssize_t n, list events) except -1
    cdef int _control_done(self, const unsigned char *payload, Py_ssize_t n,
                           list events) except -1
    cdef int _reserve(self, Py_ssize_t need) except -1
    cdef void _end_message(self) noexcept
    cdef Py_ssize_t _violation(self, int code, str reason, list events) except -2
    cdef void _finish(self) noexcept


cdef class FrameEncoder:
    cdef readonly bint mask
    cdef uint64_t _rng                          # xorshift64* state, never 0

    cpdef bytes frame(self, int opcode, payload, bint fin=*, bint rsv1=*)
    cpdef bytes close(self, int code, str reason=*)
    cdef uint32_t _next_key(self) noexcept


# One frame in one allocation: header (+ masking key) + payload, masked when ``masked``.
cdef bytes _frame(unsigned char first_byte, const unsigned char *payload, Py_ssize_t n,
                  bint masked, uint32_t key)

cpdef bytes encode_frame(int opcode, payload)
cpdef bytes text_frame(payload)
cpdef bytes binary_frame(payload)
cpdef bytes ping_frame(payload=*)
cpdef bytes pong_frame(payload=*)
cpdef bytes close_frame(int code, str reason=*)
cpdef bytes stamped_text_frame(bytes body, long long seq)
