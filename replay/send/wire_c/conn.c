/* The compiled sender's connections (engine.c runs them): opening one, writing a request in one
 * or two parts, reading its answer with each read stamped, framing it (frame.h), and what ends
 * an exchange: the answer whole, a failure, or a stale keep-alive connection whose request goes
 * again on a new one. A connection closed while its thread handles a batch of events is freed
 * after the batch (`bury`): an event later in the batch may still name it. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "internal.h"

static void set_events(wire *w, conn *c, int out) {
    if (c->out_on == out) return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->out_on = out;
}

static void idle_remove(wire *w, conn *c) {
    for (conn **p = &w->idle; *p; p = &(*p)->next_idle)
        if (*p == c) {
            *p = c->next_idle;
            __atomic_sub_fetch(&w->idle_n, 1, __ATOMIC_RELAXED);
            return;
        }
}

void conn_close(wire *w, conn *c) {
    if (c->state == C_IDLE) idle_remove(w, c);
    if (c->paused) __atomic_sub_fetch(&w->npaused, 1, __ATOMIC_SEQ_CST);
    if (c->state == C_CONNECTING && c->ahead) w->spare--;
    if (!c->paused) epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    w->conns[c->slot] = w->conns[--w->nconns];
    w->conns[c->slot]->slot = c->slot;
    free(c->buf);
    free(c->st);
    c->buf = NULL;
    c->st = NULL;
    c->state = C_DEAD;
    c->next_idle = w->dead;
    w->dead = c;
}

void bury(wire *w) {
    while (w->dead) {
        conn *c = w->dead;
        w->dead = c->next_idle;
        free(c);
    }
}

/* The answer so far goes with the result (the parser reads what came: a status, a head). */
static wire_done take_answer(conn *c, int kind) {
    wire_done d = {.req = c->req, .kind = kind, .end = now_ns()};
    d.resp = c->buf;
    d.resp_len = c->len;
    d.stamps = c->st;
    d.nstamps = c->nst;
    c->buf = NULL;
    c->st = NULL;
    c->len = c->cap = c->nst = c->stcap = 0;
    c->req = NULL;
    return d;
}

void conn_fail(wire *w, conn *c, int kind, int err, const char *msg) {
    wire_done d = take_answer(c, kind);
    d.err = err;
    d.msg = msg;
    conn_close(w, c);
    emit(w, d);
}

/* A reused connection closed or reset before any byte of the answer (none kept, none handed
 * over in parts): the target had closed it while it was idle, not failed this request. */
static int stale(const conn *c) {
    return c->reused && c->len == 0 && c->handed == 0;
}

/* A stale connection's request goes again on a new connection (its stamp kept: timed from the
 * first try). */
static void resend(wire *w, conn *c) {
    wire_req *again = c->req;
    c->req = NULL;
    conn_close(w, c);
    __atomic_add_fetch(&w->resends, 1, __ATOMIC_RELAXED);
    conn_open(w, again);
}

/* A connection of ours is ready for `r` (connected, idle or new). */
static void conn_begin(conn *c, wire_req *r) {
    c->state = C_BUSY;
    c->req = r;
    c->woff = 0;
    c->handed = 0;
    frame_reset(&c->fr, r->head);
}

void conn_start(wire *w, conn *c, wire_req *r, size_t first) {
    conn_begin(c, r);
    if (r->sent == 0) r->sent = now_ns();
    write_more(w, c, first);
}

/* A send that failed with `err`: a stale connection's request goes again, else it failed. */
static void write_failed(wire *w, conn *c, int err) {
    if (stale(c)) resend(w, c);
    else conn_fail(w, c, WK_RESET, err, NULL);
}

/* Requests due together on idle connections: their first `first` bytes written in one system
 * call (uring.h) where the engine has a ring, and what a send left goes on as in write_more.
 * Each is stamped by the kernel as its write left (stamp.h); where it gives no stamp, when
 * the call returned (late, never early). */
void conn_start_many(wire *w, conn **cs, wire_req **rs, size_t n, size_t first) {
    uring *u = &w->ring;
    if (n < 2 || u->fd < 0 || n > u->entries || n > BATCH) {
        for (size_t i = 0; i < n; i++) conn_start(w, cs[i], rs[i], first);
        return;
    }
    struct msghdr msgs[BATCH];
    struct iovec iov[BATCH];
    char ctl[BATCH][STAMP_CTL];
    char fresh[BATCH];
    for (size_t i = 0; i < n; i++) {
        conn *c = cs[i];
        conn_begin(c, rs[i]);
        fresh[i] = rs[i]->sent == 0; /* not a resend: timed from this try */
        if (c->stamped == 0) c->stamped = stamp_allow(c->fd) == 0 ? 1 : -1;
        iov[i].iov_base = (void *)rs[i]->data;
        iov[i].iov_len = rs[i]->len < first ? rs[i]->len : first;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_iov = &iov[i];
        msgs[i].msg_iovlen = 1;
        if (c->stamped > 0) stamp_ask(&msgs[i], ctl[i]);
        uring_sendmsg(u, c->fd, &msgs[i], i);
    }
    int64_t t0 = now_ns();
    int got = uring_submit(u, (unsigned)n);
    int64_t t1 = now_ns(), off = realtime_ns() - t1;
    if (got > 0) __atomic_add_fetch(&w->batched, got, __ATOMIC_RELAXED);
    for (size_t i = 0; i < n; i++)
        if (fresh[i]) rs[i]->sent = t1;
    size_t taken = got > 0 ? (size_t)got : 0, seen = 0;
    char done[BATCH] = {0};
    uint64_t tag;
    int res;
    while (uring_result(u, &tag, &res)) {
        conn *c = cs[tag];
        wire_req *r = rs[tag];
        done[tag] = 1;
        seen++;
        if (res > 0 && fresh[tag] && c->stamped > 0) { /* the kernel's stamp, within the call */
            int64_t k = stamp_take(c->fd);
            if (k) r->sent = k - off < t0 ? t0 : k - off > t1 ? t1 : k - off;
        }
        if (res > 0) c->woff = (size_t)res;
        if (res >= 0 || res == -EAGAIN) write_more(w, c, first); /* the rest, or EPOLLOUT */
        else write_failed(w, c, -res);
    }
    if (seen < taken || taken < n) { /* not as uring.h promises: send() from here on */
        for (size_t i = 0; i < n; i++) {
            if (done[i]) continue;
            if (i < taken) conn_fail(w, cs[i], WK_RESET, EIO, NULL); /* may still be writing */
            else write_more(w, cs[i], first);
        }
        uring_close(u);
    }
}

/* An error-queue event on a connection: a stamp that came after its batch was read (dropped).
 * True if that was all (the connection is not to be read for it). */
int conn_late_stamp(conn *c) {
    return c->stamped > 0 && stamp_take(c->fd) != 0;
}

void write_more(wire *w, conn *c, size_t upto) {
    wire_req *r = c->req;
    size_t end = upto < r->len ? upto : r->len;
    while (c->woff < end) {
        ssize_t n = send(c->fd, r->data + c->woff, end - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(w, c, 1);
            return;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            write_failed(w, c, errno);
            return;
        }
    }
    set_events(w, c, c->woff < r->len && end == r->len);
}

conn *conn_open(wire *w, wire_req *r) {
    int fd = socket(w->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        if (r) emit_plain(w, r, WK_CONNECT, errno, NULL);
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn *c = calloc(1, sizeof *c);
    if (c == NULL || grow((void **)&w->conns, &w->capconns, w->nconns + 1, sizeof *w->conns)) abort();
    c->fd = fd;
    c->slot = w->nconns;
    w->conns[w->nconns++] = c;
    c->state = C_CONNECTING;
    c->req = r;
    c->opened = now_ns();
    c->ahead = r == NULL;
    w->spare += (size_t)c->ahead;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev);
    c->out_on = 1;
    if (connect(fd, (struct sockaddr *)&w->addr, w->addrlen) != 0 && errno != EINPROGRESS) {
        int err = errno;
        c->req = NULL;
        conn_close(w, c);
        if (r) emit_plain(w, r, WK_CONNECT, err, NULL);
        return NULL;
    }
    return c; /* connected or not, EPOLLOUT says when it is */
}

void conn_connected(wire *w, conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        wire_req *r = c->req;
        c->req = NULL;
        conn_close(w, c);
        if (r) emit_plain(w, r, WK_CONNECT, err, NULL);
        return;
    }
    __atomic_add_fetch(&w->connects, 1, __ATOMIC_RELAXED);
    if (c->ahead) {
        c->ahead = 0;
        w->spare--;
    }
    if (c->req != NULL) {
        conn_start(w, c, c->req, (size_t)-1);
        return;
    }
    set_events(w, c, 0);
    c->state = C_IDLE;
    c->next_idle = w->idle;
    w->idle = c;
    __atomic_add_fetch(&w->idle_n, 1, __ATOMIC_RELAXED);
}

static void conn_done(wire *w, conn *c, int64_t t) {
    size_t extra = c->len - c->fr.pos;
    int keep = c->fr.keep && extra == 0 && c->woff == c->req->len;
    c->len = c->fr.pos;
    for (size_t i = 0; i < c->nst; i++)
        if (c->st[2 * i] > (int64_t)c->len) c->st[2 * i] = (int64_t)c->len;
    wire_done d = take_answer(c, WK_OK);
    d.end = t;
    if (keep) {
        c->state = C_IDLE;
        c->reused = 1;
        c->next_idle = w->idle;
        w->idle = c;
        __atomic_add_fetch(&w->idle_n, 1, __ATOMIC_RELAXED);
    } else {
        conn_close(w, c);
    }
    emit(w, d);
}

/* The framed bytes of a long answer so far go to the taker as a part, with the stamps of the
 * reads that brought them (a read across the cut stamps both sides); what is not framed yet (a
 * line begun) stays, its stamps made relative to it. */
static void hand_part(wire *w, conn *c) {
    size_t upto = c->fr.pos, rest = c->len - upto, k = 0;
    while (k < c->nst && c->st[2 * k] <= (int64_t)upto) k++;
    int straddle = k < c->nst && (k == 0 || c->st[2 * (k - 1)] < (int64_t)upto);
    size_t np = k + (size_t)straddle, ncap = 0;
    int64_t *pst = malloc(2 * (np ? np : 1) * sizeof *pst);
    char *nb = NULL;
    if (pst == NULL || (rest && grow((void **)&nb, &ncap, rest + READ_ROOM, 1))) abort();
    memcpy(pst, c->st, 2 * k * sizeof *pst);
    if (straddle) {
        pst[2 * k] = (int64_t)upto;
        pst[2 * k + 1] = c->st[2 * k + 1];
    }
    size_t left = c->nst - k;
    for (size_t j = 0; j < left; j++) {
        c->st[2 * j] = c->st[2 * (k + j)] - (int64_t)upto;
        c->st[2 * j + 1] = c->st[2 * (k + j) + 1];
    }
    if (rest) memcpy(nb, c->buf + upto, rest);
    wire_done d = {.req = c->req, .kind = WK_PART, .resp = c->buf, .resp_len = upto,
                   .stamps = pst, .nstamps = np, .end = now_ns()};
    c->buf = nb;
    c->cap = ncap;
    c->len = rest;
    c->nst = left;
    c->fr.pos = 0;
    c->handed += upto;
    emit(w, d);
}

/* The taker has caught up: the paused connections read again. */
void conn_resume(wire *w) {
    for (size_t i = 0; i < w->nconns; i++) {
        conn *c = w->conns[i];
        if (!c->paused) continue;
        c->paused = 0;
        struct epoll_event ev = {.events = EPOLLIN | (c->out_on ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    __atomic_store_n(&w->npaused, 0, __ATOMIC_SEQ_CST);
}

void conn_read(wire *w, conn *c) {
    if (c->state != C_BUSY) { /* idle: the target closed it, or sent what nobody asked for */
        conn_close(w, c);
        return;
    }
    if (c->handed && __atomic_load_n(&w->held, __ATOMIC_SEQ_CST) >= HOLD_BYTES) {
        epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL); /* wait for the taker (conn_resume) */
        c->paused = 1;
        __atomic_add_fetch(&w->npaused, 1, __ATOMIC_SEQ_CST);
        return;
    }
    if (c->cap - c->len < READ_ROOM && grow((void **)&c->buf, &c->cap, c->len + READ_ROOM, 1))
        abort();
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n > 0) {
        int64_t t = now_ns();
        c->len += (size_t)n;
        if (grow((void **)&c->st, &c->stcap, 2 * (c->nst + 1), sizeof *c->st)) abort();
        c->st[2 * c->nst] = (int64_t)c->len;
        c->st[2 * c->nst + 1] = t;
        c->nst++;
        frame_feed(&c->fr, c->buf, c->len);
        if (c->fr.phase == PH_DONE) conn_done(w, c, t);
        else if (c->fr.phase == PH_ERROR) conn_fail(w, c, WK_PROTOCOL, 0, c->fr.error);
        else if (c->fr.pos >= PART_BYTES) hand_part(w, c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    int err = n < 0 ? errno : 0;
    if (err == 0 && c->fr.phase == PH_CLOSE) {
        c->fr.pos = c->len;
        c->fr.phase = PH_DONE;
        conn_done(w, c, now_ns());
        return;
    }
    if (stale(c)) resend(w, c);
    else conn_fail(w, c, WK_RESET, err, NULL);
}

conn *idle_pop(wire *w) {
    conn *c = w->idle;
    if (c != NULL) {
        w->idle = c->next_idle;
        __atomic_sub_fetch(&w->idle_n, 1, __ATOMIC_RELAXED);
    }
    return c;
}

