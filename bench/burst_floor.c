/* The floor under sending bursts on time on this machine: a minimal C sender for the schedule of
 * bench/replay_bursts.py. One thread; keep-alive connections opened before the first instant;
 * at each instant the heads (the first FIRST bytes) of every request due then, one write each,
 * then the rest of each body, then the answers. It sleeps until shortly before each instant
 * and polls the clock from there. No parsing beyond the answer's length, no records, no
 * planning: what is left of the bench's send error is this machine's (the loopback, the target
 * woken by each write, tcpdump's capture), and loadtape's figures are read against it.
 *
 *     burst_floor HOST PORT PLAN OUT
 *
 * PLAN: lines "offset_ns path body_bytes" (offsets already scaled by the replay's speed, in
 * order). OUT: JSON {path: [intended epoch ns, own send stamp epoch ns, status]}, the naive
 * peer's shape.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FIRST 2048          /* the engine's FIRST_WRITE (replay/send/wire_c/internal.h) */
#define NEAR_NS 60000       /* polled for from here, as the engine does */
#define LEAD_NS 500000000LL /* the first instant, after start-up (the naive peer's lead) */

typedef struct {
    long long off;
    char path[64];
    size_t size, len;
    char *data;
    long long sent;
    int status;
} req_t;

static long long clock_ns(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) die("send");
        p += k;
        n -= (size_t)k;
    }
}

/* One answer on `fd`: its status (nginx answers with a Content-Length). */
static int read_answer(int fd) {
    char buf[8192];
    size_t got = 0;
    for (;;) {
        ssize_t k = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (k <= 0) die("recv");
        got += (size_t)k;
        buf[got] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (end == NULL) continue;
        char *cl = strcasestr(buf, "content-length:");
        size_t need = (size_t)(end + 4 - buf) + (cl ? strtoul(cl + 15, NULL, 10) : 0);
        while (got < need) {
            k = recv(fd, buf, sizeof buf, 0);
            if (k <= 0) die("recv");
            got += (size_t)k;
        }
        return atoi(buf + 9);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: burst_floor HOST PORT PLAN OUT\n");
        return 2;
    }
    FILE *pf = fopen(argv[3], "r");
    if (pf == NULL) die(argv[3]);
    size_t n = 0, cap = 1024, most = 0;
    req_t *reqs = calloc(cap, sizeof *reqs);
    long long off;
    char path[64];
    size_t size;
    while (fscanf(pf, "%lld %63s %zu", &off, path, &size) == 3) {
        if (n == cap) reqs = realloc(reqs, (cap *= 2) * sizeof *reqs);
        req_t *r = &reqs[n++];
        memset(r, 0, sizeof *r);
        r->off = off;
        r->size = size;
        snprintf(r->path, sizeof r->path, "%s", path);
        char head[256];
        int h = snprintf(head, sizeof head,
                         "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Length: %zu\r\n\r\n", path,
                         argv[1], argv[2], size);
        r->len = (size_t)h + size;
        r->data = malloc(r->len);
        memcpy(r->data, head, (size_t)h);
        memset(r->data + h, 'x', size);
    }
    fclose(pf);
    /* connections: as many as the largest group due at one instant */
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i; j < n && reqs[j].off == reqs[i].off; j++) {}
        if (j - i > most) most = j - i;
    }
    int *fds = calloc(most, sizeof *fds);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) die("address");
    for (size_t i = 0; i < most; i++) {
        int one = 1;
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fds[i], (struct sockaddr *)&a, sizeof a)) die("connect");
    }
    long long mono0 = clock_ns(CLOCK_MONOTONIC) + LEAD_NS;
    long long epoch0 = clock_ns(CLOCK_REALTIME) + LEAD_NS;
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i; j < n && reqs[j].off == reqs[i].off; j++) {}
        long long due = mono0 + reqs[i].off, wake = due - NEAR_NS;
        struct timespec ts = {wake / 1000000000LL, wake % 1000000000LL};
        if (wake > clock_ns(CLOCK_MONOTONIC))
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        while (clock_ns(CLOCK_MONOTONIC) < due) {}
        for (size_t k = i; k < j; k++) { /* the heads of all first */
            req_t *r = &reqs[k];
            r->sent = epoch0 + clock_ns(CLOCK_MONOTONIC) - mono0;
            send_all(fds[k - i], r->data, r->len < FIRST ? r->len : FIRST);
        }
        for (size_t k = i; k < j; k++)
            if (reqs[k].len > FIRST) send_all(fds[k - i], reqs[k].data + FIRST, reqs[k].len - FIRST);
        for (size_t k = i; k < j; k++) reqs[k].status = read_answer(fds[k - i]);
    }
    FILE *out = fopen(argv[4], "w");
    if (out == NULL) die(argv[4]);
    fputc('{', out);
    for (size_t i = 0; i < n; i++)
        fprintf(out, "%s\"%s\": [%lld, %lld, %d]", i ? ", " : "", reqs[i].path,
                epoch0 + reqs[i].off, reqs[i].sent, reqs[i].status);
    fputs("}\n", out);
    fclose(out);
    return 0;
}
