# cython: language_level=3
"""Declarations of the heartbeat timer wheel (see heartbeat_wheel.pyx)."""

cdef class HeartbeatWheel:
    cdef readonly double interval
    cdef readonly double timeout
    cdef readonly double tick
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _live
    cdef Py_ssize_t _nbuckets
    cdef Py_ssize_t _mask
    cdef long long _cursor          # last fully processed tick; the next one is re-scanned
    cdef double _last_now
    cdef double *_activity          # last inbound activity per slot
    cdef double *_pinged_at         # time of the outstanding ping, or -1 when none
    cdef int *_next                 # intrusive doubly linked bucket lists
    cdef int *_prev
    cdef int *_bucket_of            # bucket index, -1 = unscheduled, -2 = free
    cdef int *_heads
    cdef int _free_head             # free list threaded through _next

    cpdef int add(self, double now) except -1
    cpdef void remove(self, int slot) except *
    cpdef void touch(self, int slot, double now) noexcept
    cpdef tuple advance(self, double now)
    cdef int _grow(self) except -1
    cdef void _unlink(self, int slot) noexcept
    cdef void _schedule(self, int slot, double due) noexcept
    cdef double _due(self, int slot) noexcept
