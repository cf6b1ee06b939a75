# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-shard heartbeat timer wheel: which connections to ping, which to close.

One wheel per shard replaces one timer (task or cancel scope) per connection. Each
connection owns a *slot*. Inbound traffic calls ``touch(slot, now)``, which is two
stores into C arrays - no rescheduling (except the first touch after a ping, which moves
the slot from its close deadline to its new, possibly earlier, ping deadline in O(1)).
The deadline of a slot is recomputed from its last activity only when the bucket it sits
in fires ("re-check on fire"), so a busy connection costs nothing but those stores.

Rules for a slot whose last activity was at ``a`` (``touch`` or ``add``):

* **ping** when ``now >= a + interval`` and no ping is outstanding since ``a``;
* **close** when a ping is outstanding and
  ``now >= max(a + interval, pinged_at - tick) + timeout``.

In steady operation ``pinged_at <= a + interval + tick``, so a silent connection is
reported for closing no later than ``a + interval + timeout + tick`` (the documented
bound). If the shard stalled and pinged late, the client still gets at least
``timeout - tick`` to answer that ping before it is closed.

``advance(now)`` fires every bucket up to ``now``; the error of any report is at most
one ``tick`` provided ``advance`` is called at least once per tick. Slots are small
integers reused after ``remove``; memory is 28 bytes per slot (1,000,000 slots =
28 MB), grown by doubling from ``capacity``.
"""

from libc.math cimport ceil, floor
from libc.stdlib cimport free, malloc, realloc

cdef enum:
    FREE = -2
    UNSCHEDULED = -1


cdef class HeartbeatWheel:
    """Heartbeat deadlines for up to millions of connections.

    Args:
        interval: seconds of silence before a ping is sent (must be > 0).
        timeout: seconds after the ping before the connection is closed (must be > 0).
        tick: wheel resolution in seconds; the error bound of every report. Default
            ``min(interval, timeout) / 10`` clamped to [0.005, 1.0].
        capacity: initial number of slots (grows by doubling; default 1024).
        buckets: number of buckets (rounded up to a power of two); default covers
            ``interval + timeout`` so a deadline is visited about once.
    """

    def __cinit__(self, double interval, double timeout, tick=None,
                  Py_ssize_t capacity=1024, buckets=None):
        cdef double t
        cdef Py_ssize_t n, i
        if not interval > 0 or not timeout > 0:
            raise ValueError("interval and timeout must be positive")
        if tick is None:
            t = min(interval, timeout) / 10.0
            t = max(0.005, min(1.0, t))
        else:
            t = float(tick)
            if not t > 0:
                raise ValueError("tick must be positive")
        self.interval = interval
        self.timeout = timeout
        self.tick = t
        if buckets is None:
            n = <Py_ssize_t>ceil((interval + timeout) / t) + 2
        else:
            n = int(buckets)
        if n < 2:
            n = 2
        i = 1
        while i < n:
            i <<= 1
        self._nbuckets = i
        self._mask = i - 1
        self._heads = <int *>malloc(self._nbuckets * sizeof(int))
        if self._heads == NULL:
            raise MemoryError()
        for n in range(self._nbuckets):
            self._heads[n] = -1
        self._capacity = 0
        self._live = 0
        self._free_head = -1
        self._cursor = -1
        self._last_now = -1e300
        self._activity = NULL
        self._pinged_at = NULL
        self._next = NULL
        self._prev = NULL
        self._bucket_of = NULL
        if capacity < 1:
            capacity = 1
        self._resize(capacity)

    def __dealloc__(self):
        free(self._heads)
        free(self._activity)
        free(self._pinged_at)
        free(self._next)
        free(self._prev)
        free(self._bucket_of)

    def _resize(self, Py_ssize_t new_capacity):
        cdef Py_ssize_t i
        cdef void *p
        p = realloc(self._activity, new_capacity * sizeof(double))
        if p == NULL:
            raise MemoryError()
        self._activity = <double *>p
        p = realloc(self._pinged_at, new_capacity * sizeof(double))
        if p == NULL:
            raise MemoryError()
        self._pinged_at = <double *>p
        p = realloc(self._next, new_capacity * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self._next = <int *>p
        p = realloc(self._prev, new_capacity * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self._prev = <int *>p
        p = realloc(self._bucket_of, new_capacity * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self._bucket_of = <int *>p
        # New slots go on the free list in ascending order.
        for i in range(new_capacity - 1, self._capacity - 1, -1):
            self._bucket_of[i] = FREE
            self._next[i] = self._free_head
            self._prev[i] = -1
            self._free_head = <int>i
        self._capacity = new_capacity

    cdef int _grow(self) except -1:
        if self._capacity >= 0x3FFFFFFF:
            raise MemoryError("heartbeat wheel is full")
        self._resize(self._capacity * 2)
        return 0

    def __len__(self):
        return self._live

    @property
    def capacity(self):
        """Slots allocated so far (grows by doubling)."""
        return self._capacity

    def __contains__(self, slot):
        cdef Py_ssize_t s = slot
        return 0 <= s < self._capacity and self._bucket_of[s] != FREE

    def last_activity(self, int slot):
        """Time of the last ``touch``/``add`` of ``slot``."""
        self._check(slot)
        return self._activity[slot]

    def ping_outstanding(self, int slot):
        """True when a ping was reported for ``slot`` and no activity came since."""
        self._check(slot)
        return self._pinged_at[slot] >= 0

    def _check(self, int slot):
        if slot < 0 or slot >= self._capacity or self._bucket_of[slot] == FREE:
            raise KeyError(slot)

    cpdef int add(self, double now) except -1:
        """Allocate a slot for a new connection whose last activity is ``now``."""
        cdef int slot
        if self._free_head == -1:
            self._grow()
        slot = self._free_head
        self._free_head = self._next[slot]
        self._activity[slot] = now
        self._pinged_at[slot] = -1.0
        self._bucket_of[slot] = UNSCHEDULED
        self._live += 1
        self._schedule(slot, now + self.interval)
        return slot

    cpdef void remove(self, int slot) except *:
        """Free ``slot`` (the connection is gone). KeyError if it is not allocated."""
        if slot < 0 or slot >= self._capacity or self._bucket_of[slot] == FREE:
            raise KeyError(slot)
        self._unlink(slot)
        self._bucket_of[slot] = FREE
        self._next[slot] = self._free_head
        self._prev[slot] = -1
        self._free_head = slot
        self._live -= 1

    cpdef void touch(self, int slot, double now) noexcept:
        """Record inbound activity: an O(1) store. Unknown or freed slots are ignored."""
        if slot < 0 or slot >= self._capacity:
            return
        self._activity[slot] = now
        if self._pinged_at[slot] >= 0:
            # The slot waits in the bucket of its close deadline, which can be later than
            # the new ping deadline (interval < timeout): move it, once per ping answered.
            self._pinged_at[slot] = -1.0
            if self._bucket_of[slot] >= 0:
                self._unlink(slot)
                self._schedule(slot, now + self.interval)

    cdef void _unlink(self, int slot) noexcept:
        cdef int b = self._bucket_of[slot]
        cdef int nx, pv
        if b < 0:
            return
        nx = self._next[slot]
        pv = self._prev[slot]
        if pv == -1:
            self._heads[b] = nx
        else:
            self._next[pv] = nx
        if nx != -1:
            self._prev[nx] = pv
        self._bucket_of[slot] = UNSCHEDULED
        self._next[slot] = -1
        self._prev[slot] = -1

    cdef void _schedule(self, int slot, double due) noexcept:
        # A deadline goes to the bucket of the tick it falls in, and never to a tick that
        # is already closed (<= _cursor). The current tick's bucket stays open: every
        # advance() re-scans it, so a deadline is reported by the first advance at or
        # after it, not at the end of its tick (which could be almost two ticks late).
        cdef long long k = <long long>floor(due / self.tick)
        cdef int b
        if k <= self._cursor:
            k = self._cursor + 1
        b = <int>(k & self._mask)
        self._prev[slot] = -1
        self._next[slot] = self._heads[b]
        if self._heads[b] != -1:
            self._prev[self._heads[b]] = slot
        self._heads[b] = slot
        self._bucket_of[slot] = b

    cdef double _due(self, int slot) noexcept:
        cdef double a = self._activity[slot]
        cdef double p = self._pinged_at[slot]
        cdef double base
        if p < 0:
            return a + self.interval
        base = a + self.interval
        if p - self.tick > base:
            base = p - self.tick
        return base + self.timeout

    cpdef tuple advance(self, double now):
        """Fire every bucket due at ``now``.

        Returns ``(ping, close)``: lists of slots that went idle (send a ping) and slots
        silent past the timeout (close them; they stay allocated, unscheduled, until
        ``remove``). ``now`` must not go backwards; an earlier ``now`` fires nothing.
        """
        cdef list pings = []
        cdef list closes = []
        cdef long long target, k, first
        cdef int b, slot, nxt
        cdef double due
        if now < self._last_now:
            return pings, closes
        self._last_now = now
        target = <long long>floor(now / self.tick)
        if target <= self._cursor:
            return pings, closes
        first = self._cursor + 1
        if target - first >= self._nbuckets:
            # A long gap: visiting each bucket once re-checks every slot against ``now``.
            first = target - self._nbuckets + 1
        # Ticks before ``target`` are closed; tick ``target`` stays open (see _schedule).
        self._cursor = target - 1
        for k in range(first, target + 1):
            b = <int>(k & self._mask)
            slot = self._heads[b]
            self._heads[b] = -1
            while slot != -1:
                nxt = self._next[slot]
                self._bucket_of[slot] = UNSCHEDULED
                self._next[slot] = -1
                self._prev[slot] = -1
                due = self._due(slot)
                if due <= now:
                    if self._pinged_at[slot] < 0:
                        pings.append(slot)
                        self._pinged_at[slot] = now
                        self._schedule(slot, self._due(slot))
                    else:
                        closes.append(slot)
                else:
                    self._schedule(slot, due)
                slot = nxt
        return pings, closes
