/* The first writes of requests due together, in one system call (io_uring, raw: no liburing).
 *
 * Why: on loopback each write wakes the target (and a capture on the interface), and the kernel
 * marks the writer for preemption; with one send() a request, the writer is preempted at the
 * return of whichever send that was, and the rest of a burst waits out the other task's turn
 * (2-3 ms beside a CPU-bound process). In one io_uring_enter the kernel (preemption model
 * `none` or `voluntary`) writes all of them before it returns: 32 heads of a burst beside a
 * CPU-bound process went out in 0.95 ms against 1.4 with send() (docs/performance.md).
 *
 * Every send is asked with MSG_DONTWAIT, so it completes inside the call (or fails EAGAIN):
 * nothing of a connection is written behind the engine's back. Where io_uring is not there (an
 * old kernel, io_uring_disabled, a container's seccomp) or LOADTAPE_WIRE_URING=0, the engine
 * writes with send() as before. */
#ifndef LOADTAPE_WIRE_URING_H
#define LOADTAPE_WIRE_URING_H

#include <errno.h>
#if defined(__has_include) && !defined(LOADTAPE_NO_URING)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#define LOADTAPE_HAVE_URING 1
#endif
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(LOADTAPE_HAVE_URING) && !(defined(__NR_io_uring_setup) && \
                                       defined(__NR_io_uring_enter) && \
                                       defined(IORING_FEAT_SINGLE_MMAP))
#undef LOADTAPE_HAVE_URING /* the C library's syscall list lacks it, or headers before 5.4 */
#endif

/* Kernel headers older than the kernel: what this file asks for is the kernel's to refuse. */
#ifdef LOADTAPE_HAVE_URING
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#else /* no io_uring headers at all (before Linux 5.1): send() alone */
struct io_uring_sqe;
struct io_uring_cqe;
#endif

typedef struct {
    int fd; /* -1: not in use */
    unsigned entries;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_len, cq_len, sqe_len;
} uring;

static inline void uring_close(uring *u) {
    if (u->fd < 0) return;
    if (u->sqes) munmap(u->sqes, u->sqe_len);
    if (u->cq_map) munmap(u->cq_map, u->cq_len);
    if (u->sq_map) munmap(u->sq_map, u->sq_len);
    close(u->fd);
    memset(u, 0, sizeof *u);
    u->fd = -1;
}

/* A ring for batches of up to `entries` sends; 0, or -1 with u->fd = -1 (not here). */
static inline int uring_open(uring *u, unsigned entries) {
    memset(u, 0, sizeof *u);
    u->fd = -1;
    const char *off = getenv("LOADTAPE_WIRE_URING");
    if (off != NULL && strcmp(off, "0") == 0) return -1;
#ifdef LOADTAPE_HAVE_URING
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SUBMIT_ALL; /* a send that fails does not hold back the others */
    int fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (fd < 0 && errno == EINVAL) { /* before Linux 5.18: those after it go by send() */
        memset(&p, 0, sizeof p);
        fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    }
    if (fd < 0) return -1;
    u->fd = fd;
    u->entries = p.sq_entries;
    u->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    u->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    u->sqe_len = p.sq_entries * sizeof(struct io_uring_sqe);
    u->sq_map = mmap(NULL, u->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_SQ_RING);
    u->cq_map = mmap(NULL, u->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_CQ_RING);
    u->sqes = mmap(NULL, u->sqe_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQES);
    if (u->sq_map == MAP_FAILED || u->cq_map == MAP_FAILED || u->sqes == MAP_FAILED) {
        if (u->sq_map == MAP_FAILED) u->sq_map = NULL;
        if (u->cq_map == MAP_FAILED) u->cq_map = NULL;
        if (u->sqes == MAP_FAILED) u->sqes = NULL;
        uring_close(u);
        return -1;
    }
    char *sq = u->sq_map, *cq = u->cq_map;
    u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    u->sq_array = (unsigned *)(sq + p.sq_off.array);
    u->cq_head = (unsigned *)(cq + p.cq_off.head);
    u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
#else
    return -1;
#endif
}

#ifdef LOADTAPE_HAVE_URING
/* Queues a sendmsg of `m` (kept alive until the results are read). */
static inline void uring_sendmsg(uring *u, int fd, const struct msghdr *m, uint64_t tag) {
    unsigned tail = *u->sq_tail, idx = tail & *u->sq_mask;
    struct io_uring_sqe *s = &u->sqes[idx];
    memset(s, 0, sizeof *s);
    s->opcode = IORING_OP_SENDMSG;
    s->fd = fd;
    s->addr = (uint64_t)(uintptr_t)m;
    s->len = 1;
    s->msg_flags = MSG_NOSIGNAL | MSG_DONTWAIT;
    s->user_data = tag;
    u->sq_array[idx] = idx;
    __atomic_store_n(u->sq_tail, tail + 1, __ATOMIC_RELEASE);
}

/* Submits the `n` queued sends and waits for all their results; how many the kernel took (in
 * queue order: the rest were not submitted), or -1. */
static inline int uring_submit(uring *u, unsigned n) {
    int got;
    do {
        got = (int)syscall(__NR_io_uring_enter, u->fd, n, 0, 0, NULL, 0);
    } while (got < 0 && errno == EINTR);
    if (got <= 0) return got;
    /* each completes inside the call (MSG_DONTWAIT); should one not have, wait for it */
    unsigned ready = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE) - *u->cq_head;
    while (ready < (unsigned)got) {
        if (syscall(__NR_io_uring_enter, u->fd, 0, (unsigned)got - ready, IORING_ENTER_GETEVENTS,
                    NULL, 0) < 0 && errno != EINTR)
            break;
        ready = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE) - *u->cq_head;
    }
    return got;
}

/* The next result (tag and the send's return: bytes or -errno); 0 when there is none. */
static inline int uring_result(uring *u, uint64_t *tag, int *res) {
    unsigned head = *u->cq_head;
    if (head == __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE)) return 0;
    struct io_uring_cqe *c = &u->cqes[head & *u->cq_mask];
    *tag = c->user_data;
    *res = c->res;
    __atomic_store_n(u->cq_head, head + 1, __ATOMIC_RELEASE);
    return 1;
}
#else /* never called: uring_open has left fd at -1 */
static inline void uring_sendmsg(uring *u, int fd, const struct msghdr *m, uint64_t tag) {}
static inline int uring_submit(uring *u, unsigned n) { return -1; }
static inline int uring_result(uring *u, uint64_t *tag, int *res) { return 0; }
#endif

#endif
