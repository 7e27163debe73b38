/* The compiled sender's engine (engine.h): one thread, epoll, an absolute timerfd for the next
 * request's instant, keep-alive connections to one plain-HTTP target.
 *
 * Why: in Python, an open-loop request costs two wakeups of the event loop (its instant, then
 * its response), each paid with the interpreter's caches to refill; the same two wakeups in C
 * cost a third as much (docs/performance.md). Here the thread does what is timed (the write at
 * the instant, each read stamped as it comes) and the Python side takes the finished exchanges
 * in batches, reading them with the same parser as the Python sender, fed the same bytes with
 * the stamps of the reads that brought them.
 *
 * Each request is stamped before its first write; a request that needs a new connection is
 * stamped at its instant and waits for the connect (as the Python sender does). A body of more
 * than FIRST_WRITE bytes is written in two parts: the heads of every request due together
 * first, then the rest. A reused connection the target closed before any byte of the answer
 * takes the request again on a new connection, timed from the first try.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "internal.h"

#define POLL_NS 20000          /* a request due sooner than this is polled for, not slept for */
#define PREOPEN_NS 1000000     /* connections are opened ahead for what is due this soon */
#define SWEEP_NS 10000000      /* deadlines are checked this often while requests are out */
#define EARLY_AFTER_NS 4000000 /* a longer sleep ends early: see wake_for */
#define EARLY_NS 2000000
#define REST_NS 400000
#define NEAR_NS 60000

/* -- the requests waiting for their instant: a min-heap on (due, id) ----------------------- */
static int before(const wire_req *a, const wire_req *b) {
    return a->due < b->due || (a->due == b->due && a->id < b->id);
}

static void heap_push(wire *w, wire_req *r) {
    if (grow((void **)&w->heap, &w->capheap, w->nheap + 1, sizeof *w->heap)) abort();
    size_t i = w->nheap++;
    while (i && before(r, w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = r;
}

static wire_req *heap_pop(wire *w) {
    wire_req *top = w->heap[0], *last = w->heap[--w->nheap];
    size_t i = 0, n = w->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(w->heap[c + 1], w->heap[c])) c++;
        if (!before(w->heap[c], last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

/* How many waiting requests are due by `limit` (at most `most`): the heap's subtree walk. */
static size_t due_by(wire *w, size_t i, int64_t limit, size_t most) {
    if (i >= w->nheap || w->heap[i]->due > limit || most == 0) return 0;
    size_t n = 1;
    n += due_by(w, 2 * i + 1, limit, most - n);
    if (n < most) n += due_by(w, 2 * i + 2, limit, most - n);
    return n;
}

/* -- results --------------------------------------------------------------------------------- */
void emit(wire *w, wire_done d) {
    pthread_mutex_lock(&w->mu);
    if (grow((void **)&w->outbox, &w->capout, w->nout + 1, sizeof *w->outbox)) abort();
    w->outbox[w->nout++] = d;
    if (d.kind == WK_PART) __atomic_add_fetch(&w->held, d.resp_len, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&w->mu);
}

void emit_plain(wire *w, wire_req *r, int kind, int err, const char *msg) {
    wire_done d = {.req = r, .kind = kind, .err = err, .msg = msg, .end = now_ns()};
    emit(w, d);
}

/* -- the loop -------------------------------------------------------------------------------- */
static void fire_due(wire *w, int64_t now) {
    conn *cs[BATCH];
    wire_req *rs[BATCH];
    size_t n = 0, m = 0;
    while (w->nheap && w->heap[0]->due <= now && m < BATCH) {
        wire_req *r = heap_pop(w);
        m++;
        conn *c = idle_pop(w);
        if (c == NULL) {
            r->sent = now_ns();
            conn_open(w, r);
            continue;
        }
        cs[n] = c;
        rs[n++] = r;
    }
    conn_start_many(w, cs, rs, n, FIRST_WRITE); /* every head first */
    for (size_t i = 0; i < n; i++) /* then the rest of the large ones */
        if (cs[i]->state == C_BUSY && cs[i]->req == rs[i] && cs[i]->woff < rs[i]->len &&
            cs[i]->out_on == 0)
            write_more(w, cs[i], (size_t)-1);
}

static void sweep(wire *w, int64_t now) {
    w->last_sweep = now;
    if (w->timeout_ns <= 0) return;
    for (size_t i = 0; i < w->nconns;) {
        conn *c = w->conns[i];
        int64_t since = c->req ? c->req->sent : c->opened;
        if (c->state != C_IDLE && now - since >= w->timeout_ns) {
            if (c->req) conn_fail(w, c, WK_TIMEOUT, 0, NULL);
            else conn_close(w, c);
            continue; /* the slot now holds another connection */
        }
        i++;
    }
}

static void open_ahead(wire *w, int64_t now, int asked) {
    size_t have = (size_t)__atomic_load_n(&w->idle_n, __ATOMIC_RELAXED) + w->spare;
    size_t want = due_by(w, 0, now + PREOPEN_NS, BATCH);
    if ((size_t)asked > want) want = (size_t)asked;
    for (; have < want; have++)
        if (conn_open(w, NULL) == NULL) break;
}

/* When to wake for the next request, due at `due` (0: poll now). At its instant; but a wakeup
 * after a long sleep comes late (after 50-100 ms, 250-290 us here: the vCPU idles deeper), so
 * after more than EARLY_AFTER_NS the thread wakes a tenth early (at most EARLY_NS), then sleeps
 * again until REST_NS and NEAR_NS before the instant (shorter sleeps wake closer to time) and
 * polls only from there: a thread that polls uses up its turn on a busy CPU, and is then passed
 * over at the instant (docs/performance.md). */
static int64_t wake_for(wire *w, int64_t due, int64_t now) {
    int64_t lead = due - now;
    if (lead <= POLL_NS) return 0;
    if (lead > EARLY_AFTER_NS) {
        w->early_for = due;
        return due - (lead / 10 < EARLY_NS ? lead / 10 : EARLY_NS);
    }
    if (w->early_for != due) return due;
    if (lead > REST_NS + POLL_NS) return due - REST_NS;
    return lead > NEAR_NS + POLL_NS ? due - NEAR_NS : 0;
}

static void *run(void *arg) {
    wire *w = arg;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    prctl(PR_SET_NAME, "loadtape-wire", 0, 0, 0); /* top -H, perf, bench/replay_threads.py */
    __atomic_store_n(&w->tid, (int)gettid(), __ATOMIC_RELEASE);
    struct epoll_event evs[64];
    for (;;) {
        int64_t now = now_ns();
        fire_due(w, now);
        pthread_mutex_lock(&w->mu);
        for (size_t i = 0; i < w->nin; i++) heap_push(w, w->inbox[i]);
        w->nin = 0;
        int stop = w->stop, unsend = w->unsend, asked = w->preopen;
        w->unsend = w->preopen = 0;
        int64_t next = w->nheap ? w->heap[0]->due : INT64_MAX;
        w->wake_at = next;
        pthread_mutex_unlock(&w->mu);
        if (stop) break;
        if (unsend) {
            while (w->nheap) emit_plain(w, heap_pop(w), WK_UNSENT, 0, NULL);
            pthread_mutex_lock(&w->mu);
            w->unsend_done = 1;
            pthread_cond_broadcast(&w->unsent);
            pthread_mutex_unlock(&w->mu);
        }
        now = now_ns();
        if (w->nheap || asked) open_ahead(w, now, asked);
        int busy = w->nconns > (size_t)__atomic_load_n(&w->idle_n, __ATOMIC_RELAXED);
        if (busy && now - w->last_sweep >= SWEEP_NS) sweep(w, now);
        int timeout = -1;
        int64_t at = w->nheap ? wake_for(w, w->heap[0]->due, now) : -1;
        if (at == 0) {
            timeout = 0;
        } else if (at > 0 && at != w->armed) {
            w->armed = at;
            struct itimerspec its = {.it_value = {at / 1000000000LL, at % 1000000000LL}};
            timerfd_settime(w->tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        if (timeout && busy) timeout = (int)((w->last_sweep + SWEEP_NS - now) / 1000000) + 1;
        int n = epoll_wait(w->ep, evs, 64, timeout);
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            uint64_t v;
            if (p == &w->tfd || p == &w->efd) {
                if (read(p == &w->tfd ? w->tfd : w->efd, &v, sizeof v) < 0) { /* nothing to read */ }
                if (p == &w->tfd) w->armed = 0;
                continue;
            }
            conn *c = p;
            if (c->state == C_DEAD) continue; /* closed earlier in this batch */
            if (c->state == C_CONNECTING) {
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) conn_connected(w, c);
                continue;
            }
            if ((evs[i].events & (EPOLLERR | EPOLLIN | EPOLLHUP)) == EPOLLERR &&
                conn_late_stamp(c))
                continue; /* a send's stamp, not an error: the error queue is empty again */
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                conn_read(w, c);
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && c->state == C_BUSY) write_more(w, c, (size_t)-1);
        }
        bury(w);
        if (__atomic_load_n(&w->npaused, __ATOMIC_SEQ_CST) &&
            __atomic_load_n(&w->held, __ATOMIC_SEQ_CST) < HOLD_BYTES / 2)
            conn_resume(w);
    }
    bury(w);
    return NULL;
}

/* -- the caller's side ----------------------------------------------------------------------- */
static void poke(wire *w) {
    uint64_t one = 1;
    if (write(w->efd, &one, sizeof one) < 0) { /* the counter is already set: it wakes anyway */ }
}

wire *wire_open(const struct sockaddr *addr, socklen_t addrlen, int64_t timeout_ns) {
    wire *w = calloc(1, sizeof *w);
    if (w == NULL || addrlen > sizeof w->addr) {
        free(w);
        errno = EINVAL;
        return NULL;
    }
    memcpy(&w->addr, addr, addrlen);
    w->addrlen = addrlen;
    w->timeout_ns = timeout_ns;
    w->wake_at = INT64_MAX;
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->ep < 0 || w->tfd < 0 || w->efd < 0) goto fail;
    struct epoll_event te = {.events = EPOLLIN, .data.ptr = &w->tfd};
    struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &w->efd};
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, w->tfd, &te) || epoll_ctl(w->ep, EPOLL_CTL_ADD, w->efd, &ee))
        goto fail;
    uring_open(&w->ring, BATCH); /* or send() alone: uring.h */
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->unsent, NULL);
    int err = pthread_create(&w->th, NULL, run, w);
    if (err) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->unsent);
        uring_close(&w->ring);
        errno = err;
        goto fail;
    }
    w->started = 1;
    return w;
fail: {
    int err = errno;
    if (w->ep >= 0) close(w->ep);
    if (w->tfd >= 0) close(w->tfd);
    if (w->efd >= 0) close(w->efd);
    free(w);
    errno = err;
    return NULL;
}
}

int wire_submit(wire *w, wire_req *r) {
    pthread_mutex_lock(&w->mu);
    if (w->stop || grow((void **)&w->inbox, &w->capin, w->nin + 1, sizeof *w->inbox)) {
        pthread_mutex_unlock(&w->mu);
        return -1;
    }
    w->inbox[w->nin++] = r;
    int wake = r->due < w->wake_at;
    if (wake) w->wake_at = r->due;
    pthread_mutex_unlock(&w->mu);
    if (wake) poke(w);
    return 0;
}

void wire_preopen(wire *w, int n) {
    pthread_mutex_lock(&w->mu);
    w->preopen += n;
    pthread_mutex_unlock(&w->mu);
    poke(w);
}

void wire_unsend(wire *w) {
    pthread_mutex_lock(&w->mu);
    w->unsend = 1;
    for (size_t i = 0; i < w->nin; i++) { /* not yet seen by the thread */
        wire_req *r = w->inbox[i];
        wire_done d = {.req = r, .kind = WK_UNSENT, .end = now_ns()};
        if (grow((void **)&w->outbox, &w->capout, w->nout + 1, sizeof *w->outbox)) abort();
        w->outbox[w->nout++] = d;
    }
    w->nin = 0;
    w->unsend_done = 0;
    poke(w);
    while (!w->unsend_done && !w->stop) pthread_cond_wait(&w->unsent, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

wire_done *wire_take(wire *w, size_t *n) {
    pthread_mutex_lock(&w->mu);
    wire_done *out = w->outbox;
    *n = w->nout;
    w->outbox = NULL;
    w->nout = w->capout = 0;
    __atomic_store_n(&w->held, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&w->mu);
    if (__atomic_load_n(&w->npaused, __ATOMIC_SEQ_CST)) poke(w); /* the paused read again */
    return out;
}

void wire_close(wire *w) {
    if (!w->started) return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->unsent);
    pthread_mutex_unlock(&w->mu);
    poke(w);
    pthread_join(w->th, NULL);
    w->started = 0;
    while (w->nconns) {
        conn *c = w->conns[0];
        if (c->req) conn_fail(w, c, WK_INTERRUPTED, 0, NULL);
        else conn_close(w, c);
    }
    bury(w);
    while (w->nheap) emit_plain(w, heap_pop(w), WK_UNSENT, 0, NULL);
    for (size_t i = 0; i < w->nin; i++) emit_plain(w, w->inbox[i], WK_UNSENT, 0, NULL);
    w->nin = 0;
}

void wire_free(wire *w) {
    wire_close(w);
    close(w->ep);
    close(w->tfd);
    close(w->efd);
    uring_close(&w->ring);
    free(w->inbox);
    free(w->outbox);
    free(w->heap);
    free(w->conns);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->unsent);
    free(w);
}

int wire_uring(wire *w) { return w->ring.fd >= 0; }

int wire_tid(wire *w) {
    int tid;
    while ((tid = __atomic_load_n(&w->tid, __ATOMIC_ACQUIRE)) == 0 && w->started) sched_yield();
    return tid;
}

void wire_counts(wire *w, long *connects, long *resends, long *idle, long *batched) {
    *batched = __atomic_load_n(&w->batched, __ATOMIC_RELAXED);
    *connects = __atomic_load_n(&w->connects, __ATOMIC_RELAXED);
    *resends = __atomic_load_n(&w->resends, __ATOMIC_RELAXED);
    *idle = __atomic_load_n(&w->idle_n, __ATOMIC_RELAXED);
}
