/* The kernel's own stamp of a request's first write, for the requests of a burst written in one
 * io_uring call (uring.h): each send asks for it (SO_TIMESTAMPING, TX_SCHED: taken as the
 * packet enters the device's queue, in the writer's context, as tcpdump on the interface sees
 * it leave), and it is read back from the socket's error queue once the call returns.
 *
 * Why: a batch's requests are written one after another inside the call, and a clock read
 * after it is late for all but the last (by the call's length, and on a busy machine by the
 * preemption at its return: up to 1.5 ms). Where the kernel gives no stamp, the stamp is the
 * clock after the call (late, never early). */
#ifndef LOADTAPE_WIRE_STAMP_H
#define LOADTAPE_WIRE_STAMP_H

#include <linux/errqueue.h>
#include <linux/net_tstamp.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define STAMP_CTL CMSG_SPACE(sizeof(uint32_t))

/* Lets the socket report software stamps (only the sends that ask are stamped); 0 or -1. */
static inline int stamp_allow(int fd) {
    uint32_t v = SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_TSONLY;
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &v, sizeof v);
}

/* A send's control message asking for the stamp, in `buf` (STAMP_CTL bytes). */
static inline void stamp_ask(struct msghdr *m, char *buf) {
    memset(buf, 0, STAMP_CTL);
    m->msg_control = buf;
    m->msg_controllen = STAMP_CTL;
    struct cmsghdr *c = CMSG_FIRSTHDR(m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SO_TIMESTAMPING;
    c->cmsg_len = CMSG_LEN(sizeof(uint32_t));
    uint32_t v = SOF_TIMESTAMPING_TX_SCHED;
    memcpy(CMSG_DATA(c), &v, sizeof v);
}

/* The stamps waiting on `fd`, all read; the last one (CLOCK_REALTIME ns), or 0. */
static inline int64_t stamp_take(int fd) {
    int64_t got = 0;
    for (;;) {
        char ctl[256];
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_control = ctl;
        m.msg_controllen = sizeof ctl;
        if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) return got;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPING) {
                struct scm_timestamping ts;
                memcpy(&ts, CMSG_DATA(c), sizeof ts);
                if (ts.ts[0].tv_sec || ts.ts[0].tv_nsec)
                    got = (int64_t)ts.ts[0].tv_sec * 1000000000LL + ts.ts[0].tv_nsec;
            }
        }
    }
}

static inline int64_t realtime_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

#endif
