/* The compiled sender's engine: one thread that sends each request at its instant and reads its
 * response, over keep-alive HTTP/1.1 connections to one plain-HTTP target (see engine.c). It
 * touches no Python object: the module (module.c) hands it requests and takes its results. */
#ifndef LOADTAPE_WIRE_ENGINE_H
#define LOADTAPE_WIRE_ENGINE_H

#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

enum wire_kind {
    WK_OK = 0,
    WK_CONNECT = 1,     /* the connection could not be opened (errno in `err`) */
    WK_RESET = 2,       /* closed or reset before the response ended */
    WK_TIMEOUT = 3,     /* no whole response within the timeout */
    WK_PROTOCOL = 4,    /* not HTTP/1.x that can be framed (`msg`) */
    WK_INTERRUPTED = 5, /* in flight when the engine was closed */
    WK_UNSENT = 6,      /* never written: taken back by wire_unsend() or the close */
    WK_PART = 7,        /* a long answer's bytes so far: the request is still out, more follow */
};

/* A longer answer goes to the taker in parts of about this much as it arrives (WK_PART): a
 * connection holds no more of it, however long the body (a download, a long stream). */
#define PART_BYTES (1 << 20)
/* With this much of the parts not yet taken, the connections with more to read wait (out of the
 * epoll set: the target's sends then wait in TCP) until the taker has caught up to half of it. */
#define HOLD_BYTES (16 << 20)

typedef struct wire_req {
    long long id;
    int64_t due;       /* CLOCK_MONOTONIC ns */
    const char *data;  /* the request's bytes: the caller keeps them alive until it is done */
    size_t len;
    int head;          /* a HEAD request: no body follows its response's head */
    int64_t sent;      /* stamped before its first write (0: not yet) */
    void *owner;       /* the caller's (module.c: the bytes object) */
} wire_req;

typedef struct wire_done {
    wire_req *req;
    int kind, err;
    const char *msg;   /* static text for WK_PROTOCOL */
    char *resp;        /* the response's bytes, or a part's (malloc'd; the taker frees them) */
    size_t resp_len;
    int64_t *stamps;   /* pairs (bytes of `resp` read so far, ns), one per read (malloc'd) */
    size_t nstamps;
    int64_t end;       /* when the response ended, or the error was met */
} wire_done;

typedef struct wire wire;

/* A new engine for the target at `addr`; its thread runs until wire_close(). NULL: errno. */
wire *wire_open(const struct sockaddr *addr, socklen_t addrlen, int64_t timeout_ns);
/* A request to send at req->due (thread-safe; the engine owns `req` until it is done). */
int wire_submit(wire *w, wire_req *req);
/* Opens up to `n` idle connections now, ahead of the requests that will need them. */
void wire_preopen(wire *w, int n);
/* The requests done since the last call (thread-safe); *n of them, the array malloc'd. */
wire_done *wire_take(wire *w, size_t *n);
/* Requests not yet written come back as WK_UNSENT, at the next wire_take (it returns once
 * the thread has given them back). */
void wire_unsend(wire *w);
/* Stops the thread; what was in flight comes back as WK_INTERRUPTED, the rest as WK_UNSENT. */
void wire_close(wire *w);
void wire_free(wire *w);
/* Whether requests due together are written in one system call (uring.h), or by send(). */
int wire_uring(wire *w);
/* The engine thread's kernel id (for its scheduling policy: --rt-priority). */
int wire_tid(wire *w);
/* Counters: connections opened, resends, idle connections now, requests whose head went in a
 * batch (uring.h). */
void wire_counts(wire *w, long *connects, long *resends, long *idle, long *batched);

#endif
