/* What engine.c and conn.c share: the engine's and a connection's state, and small helpers.
 * Not part of the module's interface (engine.h is). */
#ifndef LOADTAPE_WIRE_INTERNAL_H
#define LOADTAPE_WIRE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "engine.h"
#include "frame.h"
#include "stamp.h"
#include "uring.h"

#define FIRST_WRITE 2048
#define READ_ROOM 16384
#define BATCH 256 /* requests started in one pass of the loop (at most one io_uring batch) */

enum { C_CONNECTING, C_IDLE, C_BUSY, C_DEAD };

typedef struct conn {
    int fd, state, reused, out_on;
    int paused; /* waiting for the taker (HOLD_BYTES): out of the epoll set */
    int ahead; /* opened with no request (counted in wire.spare until connected) */
    int stamped; /* the kernel stamps its batched writes (stamp.h): 1 yes, -1 no, 0 not asked */
    wire_req *req;
    size_t woff;
    char *buf;
    size_t len, cap;
    int64_t *st;
    size_t nst, stcap;
    size_t handed; /* bytes of the answer already handed over in parts */
    int64_t opened;
    frame_t fr;
    struct conn *next_idle;
    size_t slot;
} conn;

struct wire {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t unsent; /* signalled when an unsend asked for is done */
    int ep, tfd, efd, started;
    int tid; /* the thread's kernel id, once it runs */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int64_t timeout_ns;
    /* shared, under mu */
    wire_req **inbox;
    size_t nin, capin;
    wire_done *outbox;
    size_t nout, capout;
    int stop, unsend, unsend_done, preopen;
    size_t held; /* bytes of parts not yet taken (atomic) */
    int npaused; /* connections paused for the taker (the thread writes it; atomic) */
    int64_t wake_at;
    long connects, resends, idle_n, batched;
    /* the thread's own */
    wire_req **heap;
    size_t nheap, capheap;
    conn **conns;
    size_t nconns, capconns;
    conn *idle;
    size_t spare; /* connections opening with no request: ahead of the ones that will need them */
    conn *dead; /* closed during a batch of events, freed after it (events may still name them) */
    int64_t armed, last_sweep;
    int64_t early_for; /* the instant the thread last woke early for */
    uring ring;        /* the first writes of requests due together (uring.h); fd -1: send() */
};

static inline int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline int grow(void **p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * size);
    if (q == NULL) return -1;
    *p = q;
    *cap = c;
    return 0;
}

/* engine.c */
void emit(wire *w, wire_done d);
void emit_plain(wire *w, wire_req *r, int kind, int err, const char *msg);

/* conn.c: the connections, each with at most one request out */
conn *conn_open(wire *w, wire_req *r);
void conn_start(wire *w, conn *c, wire_req *r, size_t first);
void conn_start_many(wire *w, conn **cs, wire_req **rs, size_t n, size_t first);
int conn_late_stamp(conn *c);
void write_more(wire *w, conn *c, size_t upto);
void conn_connected(wire *w, conn *c);
void conn_read(wire *w, conn *c);
void conn_fail(wire *w, conn *c, int kind, int err, const char *msg);
void conn_close(wire *w, conn *c);
conn *idle_pop(wire *w);
void conn_resume(wire *w);
void bury(wire *w);

#endif
