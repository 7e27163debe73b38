/* The floor under any open-loop sender on this machine: a minimal C client, one thread, epoll and
 * an absolute timerfd, keep-alive connections, every GET sent at start + i / rate. It does what
 * loadtape's loop must do for each request (a wakeup, a write, a read, the next timer) and
 * nothing else: no parsing beyond Content-Length, no records. bench/replay_lag.py builds it with
 * the machine's C compiler and runs it beside loadtape and the naive peer; its CPU per request is
 * what a request costs on this machine before any work of ours.
 *
 *     floor HOST PORT PATH RATE N  ->  prints "cpu_us_per_req lag_p50_us lag_p99_us"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define CONNS 256

typedef struct {
    int fd, busy;
    size_t got, need; /* bytes of the response read, and its length once the head is in */
    char head[4096];
} conn_t;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static conn_t conns[CONNS];
static int nconns, ep;
static struct sockaddr_in addr;

static conn_t *free_conn(void) {
    for (int i = 0; i < nconns; i++)
        if (!conns[i].busy) return &conns[i];
    if (nconns == CONNS) return NULL;
    conn_t *c = &conns[nconns];
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        exit(2);
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)nconns};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    nconns++;
    return c;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: floor HOST PORT PATH RATE N\n");
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    double rate = atof(argv[4]);
    long n = atol(argv[5]);
    char req[512];
    int rlen = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", argv[3], argv[1]);
    long long *lag = calloc((size_t)n, sizeof *lag);
    ep = epoll_create1(0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
    free_conn(); /* one warm connection before the clock starts */
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    long long start = now_ns() + 100000000LL;
    long next = 0, done = 0;
    long long armed = -1;
    struct epoll_event evs[64];
    while (done < n) {
        long long t = now_ns();
        while (next < n && start + (long long)(next * 1e9 / rate) <= t) {
            conn_t *c = free_conn();
            if (c == NULL) break;
            c->busy = 1;
            c->got = c->need = 0;
            lag[next] = t - (start + (long long)(next * 1e9 / rate));
            if (write(c->fd, req, (size_t)rlen) != rlen) {
                perror("write");
                return 1;
            }
            next++;
            t = now_ns();
        }
        if (next < n) {
            long long due = start + (long long)(next * 1e9 / rate);
            if (due != armed) {
                struct itimerspec its = {{0, 0}, {due / 1000000000LL, due % 1000000000LL}};
                timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
                armed = due;
            }
        }
        int k = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < k; i++) {
            if (evs[i].data.u32 == 0xffffffffu) {
                unsigned long long x;
                if (read(tfd, &x, sizeof x) < 0 && errno != EAGAIN) return 1;
                armed = -1;
                continue;
            }
            conn_t *c = &conns[evs[i].data.u32];
            char buf[8192];
            ssize_t m = read(c->fd, buf, sizeof buf);
            if (m <= 0) {
                fprintf(stderr, "connection closed\n");
                return 1;
            }
            if (c->need == 0) {
                size_t h = c->got + (size_t)m < sizeof c->head ? (size_t)m : sizeof c->head - c->got - 1;
                memcpy(c->head + c->got, buf, h);
                c->head[c->got + h] = 0;
                char *end = strstr(c->head, "\r\n\r\n");
                char *cl = strcasestr(c->head, "content-length:");
                if (end && cl) c->need = (size_t)(end + 4 - c->head) + (size_t)atol(cl + 15);
            }
            c->got += (size_t)m;
            if (c->need && c->got >= c->need) {
                c->busy = 0;
                done++;
            }
        }
    }
    getrusage(RUSAGE_SELF, &r1);
    double cpu = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
                 ((r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec)) / 1e6;
    qsort(lag, (size_t)n, sizeof *lag, cmp);
    printf("%.1f %.1f %.1f\n", cpu / n * 1e6, lag[n / 2] / 1e3, lag[n * 99 / 100] / 1e3);
    return 0;
}
