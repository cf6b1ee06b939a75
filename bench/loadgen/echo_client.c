/*
 * echo_client: the native closed-loop WebSocket load generator of `python -m bench echo`.
 *
 *   echo_client --host H --port P [--path /] --conns N --seconds S --count C
 *               --payload-file F [--welcome] [--source-addrs A,B,...] [--warmup S]
 *               [--connect-timeout S]
 *
 * Opens N WebSocket connections (HTTP/1.1 upgrade, at most 200 handshakes in flight,
 * source addresses round-robin), with --welcome discards each one's first data message
 * (and later counts only messages with "type":"echo" as replies, the rest unsolicited),
 * prints "ready" and waits for a line on stdin. Then a closed loop: every connection sends
 * one masked text frame (the payload file), waits for one whole data message back, records
 * the round trip and sends the next, until --count replies in all or --seconds (the
 * requests in flight then drain). Server pings get pongs; a close frame or EOF ends that
 * connection and is counted in "errors" by kind. Prints one JSON line:
 *
 *   {"opened": n, "received": n, "unsolicited": n, "elapsed_s": s, "cpu_s": s,
 *    "cpu_user_s": s, "cpu_sys_s": s, "errors": {kind: n},
 *    "p50_us": .., "p90_us": .., "p99_us": .., "p999_us": .., "max_us": .., "min_us": ..,
 *    "mean_us": .., "rtt_us_hist": {"scheme": "..", "buckets": [[upper_us, count], ...]}}
 *
 * The histogram is log-linear (HdrHistogram-like): values in ns, exact below 256 ns, then
 * 128 sub-buckets per power of two (a bucket is at most 1/128 = 0.78 % wide). A bucket is
 * named by the highest value it holds, so histograms of several processes merge by adding
 * counts per name; percentiles are that highest value (nearest rank), capped at the max.
 * Finally every connection is closed with a masked close frame 1000 (up to 2 s for the
 * server's close reply or EOF). The server's Sec-WebSocket-Accept is not checked.
 *
 * Linux, C11, libc only: cc -O2 -Wall -Wextra -o echo_client echo_client.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_HANDSHAKES 200         /* connections being set up at once */
#define SCRATCH_SIZE (256 * 1024)  /* one recv */
#define MAX_EVENTS 1024
#define MAX_FRAME (64ull << 20)    /* a longer server frame ends the connection */
#define MAX_HEAD 16384             /* upgrade response head */
#define CLOSE_WAIT_NS 2000000000ull
#define STUCK_NS 10000000000ull    /* replies still missing this long after --seconds */

/* ------------------------------------------------------------------ histogram */
#define SUB_BITS 8
#define SUB (1u << SUB_BITS) /* exact values below this */
#define HALF (SUB >> 1)      /* sub-buckets per power of two above it */
#define MAX_SHIFT 34         /* top bucket ends near 2^42 ns = 73 min */
#define NBUCKETS (SUB + MAX_SHIFT * HALF)
#define HIST_MAX ((1ull << (MAX_SHIFT + SUB_BITS)) - 1)

static uint64_t hist[NBUCKETS];
static uint64_t hist_n, hist_max, hist_min = UINT64_MAX;
static double hist_sum;

static unsigned hist_index(uint64_t v) {
    if (v > HIST_MAX) v = HIST_MAX;
    if (v < SUB) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - (SUB_BITS - 1); /* >= 1: v >> shift in [HALF, SUB) */
    return SUB + (shift - 1) * HALF + (unsigned)((v >> shift) - HALF);
}

static uint64_t hist_upper(unsigned idx) { /* highest value in bucket idx */
    if (idx < SUB) return idx;
    unsigned k = idx - SUB;
    unsigned shift = k / HALF + 1;
    uint64_t top = k % HALF + HALF;
    return ((top + 1) << shift) - 1;
}

static void hist_record(uint64_t v) {
    hist[hist_index(v)]++;
    hist_n++;
    hist_sum += (double)v;
    if (v > hist_max) hist_max = v;
    if (v < hist_min) hist_min = v;
}

static uint64_t hist_percentile(double q) {
    if (!hist_n) return 0;
    uint64_t rank = (uint64_t)((q / 100.0) * (double)hist_n + 0.999999999);
    if (rank < 1) rank = 1;
    if (rank > hist_n) rank = hist_n;
    uint64_t seen = 0;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank) {
            uint64_t u = hist_upper(i);
            return u < hist_max ? u : hist_max;
        }
    }
    return hist_max;
}

/* ------------------------------------------------------------------ errors by kind */
#define MAX_KINDS 64
static struct {
    char name[48];
    uint64_t n;
} kinds[MAX_KINDS];
static int nkinds;

static void count_error(const char *name) {
    for (int i = 0; i < nkinds; i++)
        if (!strcmp(kinds[i].name, name)) {
            kinds[i].n++;
            return;
        }
    if (nkinds == MAX_KINDS) { /* the last slot takes every further kind */
        snprintf(kinds[MAX_KINDS - 1].name, sizeof kinds[0].name, "other");
        kinds[MAX_KINDS - 1].n++;
        return;
    }
    snprintf(kinds[nkinds].name, sizeof kinds[0].name, "%s", name);
    kinds[nkinds++].n = 1;
}

static const char *errname(int e) {
    switch (e) {
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case ECONNABORTED: return "ECONNABORTED";
    case EPIPE: return "EPIPE";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EADDRINUSE: return "EADDRINUSE";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOBUFS: return "ENOBUFS";
    case ENOMEM: return "ENOMEM";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ENETUNREACH: return "ENETUNREACH";
    case EINVAL: return "EINVAL";
    default: {
        static char buf[24];
        snprintf(buf, sizeof buf, "errno%d", e);
        return buf;
    }
    }
}

/* ------------------------------------------------------------------ small helpers */
static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t seed_state;
static uint64_t splitmix(void) { /* seeds the per-connection xorshift generators */
    uint64_t z = (seed_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint32_t xorshift32(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "echo_client: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(2);
}

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

static void buf_append(buf_t *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) die("%s", "out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_consume(buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
}

/* ------------------------------------------------------------------ connections */
enum { ST_NEW, ST_CONNECTING, ST_UPGRADING, ST_WELCOME, ST_OPEN, ST_CLOSING, ST_CLOSED };

typedef struct conn {
    int fd;
    int state;
    int active;  /* in the closed loop and not finished */
    int busy;    /* a request is out */
    int in_msg;  /* inside a fragmented data message */
    int want_out;
    uint32_t rng;
    uint64_t t0; /* request sent / setup started */
    buf_t in;    /* bytes not parsed yet */
    buf_t out;   /* bytes the socket did not take yet */
} conn_t;

static struct {
    const char *host, *path, *payload_file, *sources;
    int port, conns, welcome;
    double seconds, warmup, connect_timeout, spin_us;
    long long count;
} opt = {"127.0.0.1", "/", NULL, NULL, 0, 1, 0, 5.0, 0.0, 10.0, 0.0, 0};

static int ep;
static conn_t *conns;
static struct sockaddr_storage dest;
static socklen_t dest_len;
static struct sockaddr_storage *srcs;
static socklen_t *src_lens;
static int nsrcs;
static const uint8_t *payload;
static size_t payload_len;
static uint8_t *frame;  /* header + mask + payload, remasked per send */
static size_t frame_hdr; /* header length (without the mask) */
static uint8_t scratch[SCRATCH_SIZE];

enum { PH_SETUP, PH_WARMUP, PH_MEASURE, PH_CLOSING };
static int phase = PH_SETUP;
static int in_setup, opened, active, closing;
static uint64_t received, unsolicited;
static uint64_t t_start, t_deadline, t_warm_end, t_last;
static long long count_limit;

static void set_events(conn_t *c, uint32_t ev) {
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

/* End a connection: kind NULL for an orderly end, else counted as an error. */
static void conn_end(conn_t *c, const char *kind) {
    if (c->state == ST_CLOSED) return;
    if (kind) count_error(kind);
    if (c->state == ST_CONNECTING || c->state == ST_UPGRADING || c->state == ST_WELCOME)
        in_setup--;
    if (c->state == ST_CLOSING) closing--;
    if (c->active) {
        c->active = 0;
        active--;
    }
    if (c->fd >= 0) close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->state = ST_CLOSED;
    c->in.len = c->out.len = 0;
}

static const char *stage(const conn_t *c) {
    switch (c->state) {
    case ST_CONNECTING: return "connect_";
    case ST_UPGRADING: return "upgrade_";
    case ST_WELCOME: return "welcome_";
    case ST_CLOSING: return "closing_";
    default: return "";
    }
}

static void conn_end_errno(conn_t *c, const char *what, int e) {
    char name[48];
    snprintf(name, sizeof name, "%s%s%s", stage(c), what, errname(e));
    conn_end(c, name);
}

/* One send per frame; what the socket does not take waits in c->out for EPOLLOUT. */
static int conn_send(conn_t *c, const uint8_t *data, size_t n) {
    if (c->out.len) {
        buf_append(&c->out, data, n);
        return 0;
    }
    ssize_t k = send(c->fd, data, n, MSG_NOSIGNAL);
    if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_end_errno(c, "send_", errno);
            return -1;
        }
        k = 0;
    }
    if ((size_t)k < n) {
        buf_append(&c->out, data + k, n - (size_t)k);
        if (!c->want_out) {
            c->want_out = 1;
            set_events(c, EPOLLIN | EPOLLOUT);
        }
    }
    return 0;
}

static void conn_flush(conn_t *c) {
    while (c->out.len) {
        ssize_t k = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            conn_end_errno(c, "send_", errno);
            return;
        }
        buf_consume(&c->out, (size_t)k);
    }
    if (c->want_out) {
        c->want_out = 0;
        set_events(c, EPOLLIN);
    }
}

static size_t frame_header(uint8_t *h, int opcode, uint64_t n) {
    h[0] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        h[1] = (uint8_t)(0x80 | n);
        return 2;
    }
    if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        return 4;
    }
    h[1] = 0x80 | 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)(n >> (56 - 8 * i));
    return 10;
}

static void mask_into(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4]) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i] ^ key[i & 3];
}

/* A masked control frame (payload <= 125 bytes: pong or close) into f; its length. */
static size_t control_frame(conn_t *c, uint8_t f[2 + 4 + 125], int opcode, const uint8_t *body,
                            size_t n) {
    if (n > 125) n = 125;
    f[0] = (uint8_t)(0x80 | opcode);
    f[1] = (uint8_t)(0x80 | n);
    uint32_t m = xorshift32(&c->rng);
    memcpy(f + 2, &m, 4);
    mask_into(f + 6, body, n, f + 2);
    return 6 + n;
}

static int send_control(conn_t *c, int opcode, const uint8_t *body, size_t n) {
    uint8_t f[2 + 4 + 125];
    return conn_send(c, f, control_frame(c, f, opcode, body, n));
}

static void send_request(conn_t *c, uint64_t now) {
    uint8_t *key = frame + frame_hdr;
    uint32_t m = xorshift32(&c->rng);
    memcpy(key, &m, 4);
    mask_into(key + 4, payload, payload_len, key);
    c->t0 = now;
    c->busy = 1;
    conn_send(c, frame, frame_hdr + 4 + payload_len);
}

static void now_open(conn_t *c) {
    c->state = ST_OPEN;
    in_setup--;
    opened++;
}

static double user0, sys0; /* this process's CPU seconds when the measurement began */
static uint64_t spin_idle_ns; /* of it, spent in polls that found nothing (--spin-us) */
static double rusage_s(int which_sys);

static void enter_measure(uint64_t now) {
    phase = PH_MEASURE;
    user0 = rusage_s(0);
    sys0 = rusage_s(1);
    spin_idle_ns = 0;
    t_start = t_last = now;
    t_deadline = now + (uint64_t)(opt.seconds * 1e9);
}

/* A whole data message arrived on c (at now). */
static void on_message(conn_t *c, const uint8_t *body, size_t n, uint64_t now) {
    if (c->state == ST_WELCOME) {
        if (!memmem(body, n, "\"welcome\"", 9)) {
            conn_end(c, "welcome_not_welcome");
            return;
        }
        now_open(c);
        return;
    }
    /* With --welcome (an app, not a raw echo) only an echo answers a request: the app
     * also sends messages of its own (the default app's user_left to every lobby
     * session when the previous run's connections leave), which must not be taken for
     * the reply. */
    if (c->state != ST_OPEN || !c->busy ||
        (opt.welcome && !memmem(body, n, "\"type\":\"echo\"", 13))) {
        unsolicited++;
        return;
    }
    c->busy = 0;
    if (phase == PH_WARMUP && now >= t_warm_end) enter_measure(now);
    if (phase == PH_MEASURE) {
        hist_record(now - c->t0);
        received++;
        t_last = now;
        if ((count_limit > 0 && received >= (uint64_t)count_limit) || now >= t_deadline) {
            c->active = 0;
            active--;
            return;
        }
    }
    if (c->active) send_request(c, now);
}

static void on_frame(conn_t *c, int fin, int opcode, const uint8_t *body, size_t n,
                     const uint8_t *mask, uint64_t now) {
    uint8_t ctl[125];
    if (opcode >= 8 && n <= 125 && mask) { /* servers do not mask; tolerate it */
        mask_into(ctl, body, n, mask);
        body = ctl;
    }
    switch (opcode) {
    case 0x9: /* ping */
        if (c->state != ST_CLOSING) send_control(c, 0xA, body, n);
        return;
    case 0xA: /* pong */
        return;
    case 0x8: { /* close */
        if (c->state == ST_CLOSING) {
            conn_end(c, NULL);
            return;
        }
        char name[48];
        if (n >= 2)
            snprintf(name, sizeof name, "%sclose_%d", stage(c), (body[0] << 8) | body[1]);
        else
            snprintf(name, sizeof name, "%sclose", stage(c));
        uint8_t f[2 + 4 + 125]; /* answer it, best effort: the connection ends anyway */
        size_t len = control_frame(c, f, 0x8, body, n >= 2 ? 2 : 0);
        (void)send(c->fd, f, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        conn_end(c, name);
        return;
    }
    case 0x1:
    case 0x2:
    case 0x0:
        if (c->state == ST_CLOSING) return;
        if (opcode == 0x0 && !c->in_msg) {
            conn_end(c, "protocol_continuation");
            return;
        }
        if (!fin) {
            c->in_msg = 1;
            return;
        }
        c->in_msg = 0;
        on_message(c, body, n, now); /* a fragmented message: only its last fragment's body */
        return;
    default:
        conn_end(c, "protocol_opcode");
    }
}

/* Parse server frames from p[0:n]; returns the bytes consumed (whole frames). */
static size_t parse_frames(conn_t *c, const uint8_t *p, size_t n, uint64_t now) {
    size_t i = 0;
    while (n - i >= 2 && c->state != ST_CLOSED) {
        uint8_t b0 = p[i], b1 = p[i + 1];
        uint64_t len = b1 & 0x7F;
        size_t h = 2;
        if (len == 126) {
            if (n - i < 4) break;
            len = ((uint64_t)p[i + 2] << 8) | p[i + 3];
            h = 4;
        } else if (len == 127) {
            if (n - i < 10) break;
            len = 0;
            for (size_t k = 0; k < 8; k++) len = (len << 8) | p[i + 2 + k];
            h = 10;
        }
        const uint8_t *mask = NULL;
        if (b1 & 0x80) {
            if (n - i < h + 4) break;
            mask = p + i + h;
            h += 4;
        }
        if (len > MAX_FRAME) {
            conn_end(c, "protocol_frame_too_long");
            return n;
        }
        if (n - i - h < len) break;
        on_frame(c, b0 & 0x80, b0 & 0x0F, p + i + h, (size_t)len, mask, now);
        i += h + (size_t)len;
    }
    return i;
}

static void upgrade_read(conn_t *c, uint64_t now) {
    uint8_t *end = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
    if (!end) {
        if (c->in.len > MAX_HEAD) conn_end(c, "upgrade_head_too_long");
        return;
    }
    /* "HTTP/1.1 101 Switching Protocols" */
    const char *sp = memchr(c->in.p, ' ', (size_t)(end - c->in.p));
    int status = sp ? atoi(sp + 1) : 0;
    if (status != 101 || memcmp(c->in.p, "HTTP/1.", 7) != 0) {
        char name[48];
        snprintf(name, sizeof name, "upgrade_status_%d", status);
        conn_end(c, name);
        return;
    }
    buf_consume(&c->in, (size_t)(end + 4 - c->in.p));
    if (opt.welcome)
        c->state = ST_WELCOME;
    else
        now_open(c);
    if (c->in.len) {
        size_t used = parse_frames(c, c->in.p, c->in.len, now);
        if (c->state != ST_CLOSED) buf_consume(&c->in, used);
    }
}

static void conn_read(conn_t *c) {
    ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        conn_end_errno(c, "recv_", errno);
        return;
    }
    if (n == 0) {
        if (c->state == ST_CLOSING) {
            conn_end(c, NULL);
            return;
        }
        char name[48];
        snprintf(name, sizeof name, "%seof", stage(c));
        conn_end(c, name);
        return;
    }
    uint64_t now = now_ns();
    if (c->state == ST_UPGRADING) {
        buf_append(&c->in, scratch, (size_t)n);
        upgrade_read(c, now);
        return;
    }
    if (c->in.len) { /* a frame split across reads: carry on from the buffer */
        buf_append(&c->in, scratch, (size_t)n);
        size_t used = parse_frames(c, c->in.p, c->in.len, now);
        if (c->state != ST_CLOSED) buf_consume(&c->in, used);
    } else {
        size_t used = parse_frames(c, scratch, (size_t)n, now);
        if (c->state != ST_CLOSED && used < (size_t)n)
            buf_append(&c->in, scratch + used, (size_t)n - used);
    }
}

static void send_handshake(conn_t *c) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t raw[18] = {0};
    for (int i = 0; i < 16; i += 4) {
        uint32_t r = xorshift32(&c->rng);
        memcpy(raw + i, &r, 4);
    }
    char key[25];
    for (int i = 0, o = 0; i < 18; i += 3) { /* 16 bytes -> 24 chars, "==" padded */
        uint32_t v = ((uint32_t)raw[i] << 16) | ((uint32_t)raw[i + 1] << 8) | raw[i + 2];
        key[o++] = b64[(v >> 18) & 63];
        key[o++] = b64[(v >> 12) & 63];
        key[o++] = b64[(v >> 6) & 63];
        key[o++] = b64[v & 63];
    }
    key[22] = key[23] = '=';
    key[24] = 0;
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     opt.path, opt.host, opt.port, key);
    if (n <= 0 || (size_t)n >= sizeof req) die("%s", "request line too long (--path/--host)");
    c->state = ST_UPGRADING;
    set_events(c, EPOLLIN);
    conn_send(c, (const uint8_t *)req, (size_t)n);
}

static void conn_start(conn_t *c, int index, uint64_t now) {
    c->t0 = now;
    c->state = ST_CONNECTING;
    in_setup++;
    int fd = socket(dest.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        conn_end_errno(c, "socket_", errno);
        return;
    }
    c->fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (nsrcs) {
        int s = index % nsrcs;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&srcs[s], src_lens[s]) < 0) {
            conn_end_errno(c, "bind_", errno);
            return;
        }
    }
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
        conn_end_errno(c, "epoll_", errno);
        return;
    }
    if (connect(fd, (struct sockaddr *)&dest, dest_len) < 0 && errno != EINPROGRESS) {
        conn_end_errno(c, "", errno);
        return;
    }
    /* connected or in progress: EPOLLOUT says when */
}

static void on_event(conn_t *c, uint32_t ev) {
    if (c->state == ST_CLOSED) return;
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            conn_end_errno(c, "", err);
            return;
        }
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) send_handshake(c);
        return;
    }
    if ((ev & EPOLLOUT) && c->out.len) conn_flush(c);
    if (c->state != ST_CLOSED && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) conn_read(c);
}

static struct epoll_event events[MAX_EVENTS];

static int poll_once(int timeout_ms) {
    int n = epoll_wait(ep, events, MAX_EVENTS, timeout_ms);
    for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
    return n;
}

/* ------------------------------------------------------------------ options */
static void parse_addr(const char *host, int port, struct sockaddr_storage *out, socklen_t *len,
                       int numeric) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = numeric ? AI_NUMERICHOST : 0};
    if (numeric && dest.ss_family) hints.ai_family = dest.ss_family;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0 || !res) die("cannot resolve %s", host);
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
}

static void read_payload(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open --payload-file %s", path);
    buf_t b = {0};
    uint8_t tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf_append(&b, tmp, n);
    fclose(f);
    payload = b.p ? b.p : (const uint8_t *)"";
    payload_len = b.len;
    frame = malloc(10 + 4 + payload_len);
    if (!frame) die("%s", "out of memory");
    frame_hdr = frame_header(frame, 0x1, payload_len);
}

static void usage(void) {
    fprintf(stderr,
            "usage: echo_client --host H --port P [--path /] --conns N --seconds S --count C\n"
            "                   --payload-file F [--welcome] [--source-addrs A,B,...]\n"
            "                   [--warmup S] [--connect-timeout S] [--spin-us US]\n");
    exit(2);
}

static void parse_options(int argc, char **argv) {
    static const struct option longs[] = {
        {"host", required_argument, 0, 'h'},         {"port", required_argument, 0, 'p'},
        {"path", required_argument, 0, 'P'},         {"conns", required_argument, 0, 'n'},
        {"seconds", required_argument, 0, 's'},      {"count", required_argument, 0, 'c'},
        {"payload-file", required_argument, 0, 'f'}, {"welcome", no_argument, 0, 'w'},
        {"source-addrs", required_argument, 0, 'S'}, {"warmup", required_argument, 0, 'W'},
        {"connect-timeout", required_argument, 0, 'T'}, {"spin-us", required_argument, 0, 'Y'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'P': opt.path = optarg; break;
        case 'n': opt.conns = atoi(optarg); break;
        case 's': opt.seconds = atof(optarg); break;
        case 'c': opt.count = atoll(optarg); break;
        case 'f': opt.payload_file = optarg; break;
        case 'w': opt.welcome = 1; break;
        case 'S': opt.sources = optarg; break;
        case 'W': opt.warmup = atof(optarg); break;
        case 'T': opt.connect_timeout = atof(optarg); break;
        case 'Y': opt.spin_us = atof(optarg); break;
        default: usage();
        }
    }
    if (optind != argc || opt.port <= 0 || opt.conns <= 0 || !opt.payload_file || opt.seconds <= 0)
        usage();
}

static void parse_sources(void) {
    if (!opt.sources || !*opt.sources) return;
    char *copy = strdup(opt.sources);
    int n = 1;
    for (char *p = copy; *p; p++) n += *p == ',';
    srcs = calloc((size_t)n, sizeof *srcs);
    src_lens = calloc((size_t)n, sizeof *src_lens);
    if (!copy || !srcs || !src_lens) die("%s", "out of memory");
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        parse_addr(tok, 0, &srcs[nsrcs], &src_lens[nsrcs], 1);
        nsrcs++;
    }
    free(copy);
}

static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.conns + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static double rusage_s(int which_sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    struct timeval t = which_sys ? ru.ru_stime : ru.ru_utime;
    return (double)t.tv_sec + (double)t.tv_usec / 1e6;
}

static void print_us(const char *key, uint64_t ns) {
    printf(", \"%s\": %llu.%03llu", key, (unsigned long long)(ns / 1000),
           (unsigned long long)(ns % 1000));
}

/* ------------------------------------------------------------------ main */
int main(int argc, char **argv) {
    parse_options(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    parse_addr(opt.host, opt.port, &dest, &dest_len, 0);
    parse_sources();
    read_payload(opt.payload_file);
    seed_state = now_ns() ^ ((uint64_t)getpid() << 32);
    count_limit = opt.count;

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("%s", "epoll_create1 failed");
    conns = calloc((size_t)opt.conns, sizeof *conns);
    if (!conns) die("%s", "out of memory");
    for (int i = 0; i < opt.conns; i++) {
        conns[i].fd = -1;
        conns[i].state = ST_NEW;
        do conns[i].rng = (uint32_t)splitmix();
        while (!conns[i].rng);
    }

    /* ---- setup: connect and upgrade, at most MAX_HANDSHAKES at once */
    int next = 0;
    uint64_t timeout_ns = (uint64_t)(opt.connect_timeout * 1e9), last_scan = now_ns();
    while (next < opt.conns || in_setup > 0) {
        uint64_t now = now_ns();
        while (next < opt.conns && in_setup < MAX_HANDSHAKES) {
            conn_start(&conns[next], next, now);
            next++;
        }
        poll_once(100);
        now = now_ns();
        if (now - last_scan >= 100000000ull) {
            last_scan = now;
            for (int i = 0; i < next; i++) {
                conn_t *c = &conns[i];
                if ((c->state == ST_CONNECTING || c->state == ST_UPGRADING ||
                     c->state == ST_WELCOME) &&
                    now - c->t0 > timeout_ns) {
                    char name[48];
                    snprintf(name, sizeof name, "%stimeout", stage(c));
                    conn_end(c, name);
                }
            }
        }
    }
    if (!opened) {
        fprintf(stderr, "echo_client: no connection opened to %s:%d:", opt.host, opt.port);
        for (int i = 0; i < nkinds; i++)
            fprintf(stderr, " %s=%llu", kinds[i].name, (unsigned long long)kinds[i].n);
        fprintf(stderr, "\n");
        return 1;
    }

    /* ---- ready; go on a line from the parent */
    printf("ready\n");
    fflush(stdout);
    for (char ch = 0; ch != '\n';) {
        ssize_t k = read(0, &ch, 1);
        if (k == 0) return 0; /* the parent gave up */
        if (k < 0 && errno != EINTR) return 1;
    }

    /* ---- the closed loop */
    uint64_t now = now_ns();
    if (opt.warmup > 0) {
        phase = PH_WARMUP;
        t_warm_end = now + (uint64_t)(opt.warmup * 1e9);
    } else {
        enter_measure(now);
    }
    for (int i = 0; i < opt.conns; i++) {
        conn_t *c = &conns[i];
        if (c->state != ST_OPEN) continue;
        c->active = 1;
        active++;
    }
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].active) send_request(&conns[i], now);
    uint64_t spin_ns = (uint64_t)(opt.spin_us * 1e3), idle_from = 0, cpu_mark = 0;
    while (active > 0) {
        /* --spin-us: poll without sleeping until that long without an event, yielding the
         * CPU to any other runnable process meanwhile. The CPU time between empty polls is
         * idle (thread CPU time, so sharing the core with another client is no error). */
        int spinning = spin_ns && (!idle_from || now - idle_from < spin_ns);
        uint64_t before = now;
        int n = poll_once(spinning ? 0 : 50);
        now = now_ns();
        if (n > 0) {
            idle_from = 0;
        } else if (spinning) {
            uint64_t cpu = thread_cpu_ns();
            if (!idle_from)
                idle_from = before;
            else if (phase == PH_MEASURE)
                spin_idle_ns += cpu - cpu_mark;
            cpu_mark = cpu;
            sched_yield();
        }
        if (phase == PH_WARMUP && now >= t_warm_end) enter_measure(now);
        if (phase == PH_MEASURE && now > t_deadline + STUCK_NS) {
            for (int i = 0; i < opt.conns; i++)
                if (conns[i].active) {
                    count_error("stuck");
                    conns[i].active = 0;
                    active--;
                }
        }
    }
    if (phase == PH_WARMUP) enter_measure(now_ns()); /* every connection ended in the warm-up */
    double elapsed = (double)(t_last - t_start) / 1e9;
    double user = rusage_s(0) - user0, sys = rusage_s(1) - sys0;
    double busy = user + sys - (double)spin_idle_ns / 1e9;

    /* ---- close every connection: close frame 1000, then the server's close or EOF */
    phase = PH_CLOSING;
    static const uint8_t code1000[2] = {0x03, 0xE8};
    for (int i = 0; i < opt.conns; i++) {
        conn_t *c = &conns[i];
        if (c->state != ST_OPEN) continue;
        c->state = ST_CLOSING;
        closing++;
        send_control(c, 0x8, code1000, 2);
    }
    uint64_t close_until = now_ns() + CLOSE_WAIT_NS;
    while (closing > 0 && now_ns() < close_until) poll_once(50);
    for (int i = 0; i < opt.conns; i++) {
        if (conns[i].state == ST_CLOSING) conn_end(&conns[i], NULL);
        free(conns[i].in.p);
        free(conns[i].out.p);
    }

    /* ---- the result */
    printf("{\"opened\": %d, \"received\": %llu, \"unsolicited\": %llu, \"elapsed_s\": %.6f, "
           "\"cpu_s\": %.6f, \"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f, \"busy_s\": %.6f, "
           "\"errors\": {",
           opened, (unsigned long long)received, (unsigned long long)unsolicited, elapsed,
           user + sys, user, sys, busy > 0 ? busy : 0.0);
    for (int i = 0; i < nkinds; i++)
        printf("%s\"%s\": %llu", i ? ", " : "", kinds[i].name, (unsigned long long)kinds[i].n);
    printf("}");
    print_us("p50_us", hist_percentile(50));
    print_us("p90_us", hist_percentile(90));
    print_us("p99_us", hist_percentile(99));
    print_us("p999_us", hist_percentile(99.9));
    print_us("max_us", hist_max);
    print_us("min_us", hist_n ? hist_min : 0);
    printf(", \"mean_us\": %.3f", hist_n ? hist_sum / (double)hist_n / 1000.0 : 0.0);
    printf(", \"rtt_us_hist\": {\"scheme\": \"log-linear ns, %d sub-bucket bits; [highest value "
           "in bucket in us, count]\", \"buckets\": [",
           SUB_BITS);
    int first = 1;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        if (!hist[i]) continue;
        uint64_t u = hist_upper(i);
        printf("%s[%llu.%03llu, %llu]", first ? "" : ", ", (unsigned long long)(u / 1000),
               (unsigned long long)(u % 1000), (unsigned long long)hist[i]);
        first = 0;
    }
    printf("]}}\n");
    fflush(stdout);
    return 0;
}
