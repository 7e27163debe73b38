/* Where an HTTP/1.x response ends, read as it arrives: the compiled sender's only parsing.
 *
 * The sender (engine.c) must know when a response is whole, to stamp its end and reuse the
 * connection; everything else about the response (status, headers, the body's events) is read
 * afterwards in Python by llhttp, from the same bytes and the stamps of the reads that brought
 * them. So this finds the head's end, reads the framing headers (Content-Length,
 * Transfer-Encoding, Connection) and follows the body: a length, chunks, or the connection's
 * close. Interim 1xx heads are skipped; a 101 is an error (no upgrade was asked for).
 */
#ifndef LOADTAPE_WIRE_FRAME_H
#define LOADTAPE_WIRE_FRAME_H

#include <stddef.h>
#include <string.h>
#include <strings.h>

#define HEAD_MAX (64 * 1024) /* a head longer than this is not a response we can read */

enum frame_phase {
    PH_HEAD,       /* reading a head */
    PH_LENGTH,     /* a body of known length: `remain` bytes to go */
    PH_CHUNK_SIZE, /* a chunk-size line */
    PH_CHUNK_DATA, /* `remain` bytes of chunk data */
    PH_CHUNK_CRLF, /* the CRLF after a chunk's data */
    PH_TRAILER,    /* trailer lines, up to an empty one */
    PH_CLOSE,      /* a body that ends when the connection closes */
    PH_DONE,       /* the response is whole: `pos` bytes of it */
    PH_ERROR,      /* not HTTP/1.x we can frame: `error` says why */
};

typedef struct {
    enum frame_phase phase;
    size_t pos;     /* bytes of the buffer consumed */
    long long remain;
    int status;     /* of the final head */
    int keep;       /* the connection may carry another request */
    int head_req;   /* the request was HEAD: no body follows any head */
    const char *error;
} frame_t;

static inline void frame_reset(frame_t *f, int head_req) {
    memset(f, 0, sizeof *f);
    f->phase = PH_HEAD;
    f->head_req = head_req;
}

/* The first CRLF at or after `from`, or -1. */
static inline long find_crlf(const char *b, size_t from, size_t len) {
    for (size_t i = from; i + 1 < len; i++)
        if (b[i] == '\r' && b[i + 1] == '\n') return (long)i;
    return -1;
}

/* `value` (of length n) holds `word` as a comma-separated token, in any case. */
static inline int has_token(const char *value, size_t n, const char *word) {
    size_t w = strlen(word);
    for (size_t i = 0; i + w <= n; i++) {
        if (strncasecmp(value + i, word, w) != 0) continue;
        int left = i == 0 || value[i - 1] == ',' || value[i - 1] == ' ' || value[i - 1] == '\t';
        size_t e = i + w;
        int right = e == n || value[e] == ',' || value[e] == ' ' || value[e] == '\t' ||
                    value[e] == ';';
        if (left && right) return 1;
    }
    return 0;
}

static inline void frame_fail(frame_t *f, const char *why) {
    f->phase = PH_ERROR;
    f->error = why;
}

/* Reads the head that starts at f->pos and ends at `end` (the index of its blank line's CR). */
static inline void frame_head(frame_t *f, const char *b, size_t end) {
    size_t p = f->pos;
    if (end - p < 12 || strncmp(b + p, "HTTP/1.", 7) != 0 || b[p + 8] != ' ') {
        frame_fail(f, "invalid HTTP from the target: bad status line");
        return;
    }
    int minor = b[p + 7] - '0';
    int st = 0;
    for (int i = 9; i < 12; i++) {
        char c = b[p + i];
        if (c < '0' || c > '9') {
            frame_fail(f, "invalid HTTP from the target: bad status code");
            return;
        }
        st = st * 10 + (c - '0');
    }
    int keep = minor >= 1, chunked = 0;
    long long length = -1;
    long line = find_crlf(b, p, end + 2);
    while (line >= 0 && (size_t)line < end) {
        size_t s = (size_t)line + 2;
        long e = find_crlf(b, s, end + 2);
        if (e < 0) break;
        const char *colon = memchr(b + s, ':', (size_t)e - s);
        if (colon != NULL) {
            size_t nlen = (size_t)(colon - (b + s));
            const char *v = colon + 1;
            size_t vlen = (size_t)(b + e - v);
            while (vlen && (*v == ' ' || *v == '\t')) v++, vlen--;
            if (nlen == 14 && strncasecmp(b + s, "content-length", 14) == 0) {
                long long n = 0;
                size_t i = 0;
                for (; i < vlen && v[i] >= '0' && v[i] <= '9'; i++) n = n * 10 + (v[i] - '0');
                if (i == 0 || (length >= 0 && n != length)) {
                    frame_fail(f, "invalid HTTP from the target: bad Content-Length");
                    return;
                }
                length = n;
            } else if (nlen == 17 && strncasecmp(b + s, "transfer-encoding", 17) == 0) {
                chunked = has_token(v, vlen, "chunked");
            } else if (nlen == 10 && strncasecmp(b + s, "connection", 10) == 0) {
                if (has_token(v, vlen, "close")) keep = 0;
                else if (has_token(v, vlen, "keep-alive")) keep = 1;
            }
        }
        line = e;
    }
    f->pos = end + 4;
    if (st >= 100 && st < 200) {
        if (st == 101) {
            frame_fail(f, "unexpected protocol upgrade");
            return;
        }
        return; /* an interim head: the final one follows */
    }
    f->status = st;
    f->keep = keep;
    if (f->head_req || st == 204 || st == 304) {
        f->phase = PH_DONE;
    } else if (chunked) {
        f->phase = PH_CHUNK_SIZE;
    } else if (length >= 0) {
        f->remain = length;
        f->phase = length ? PH_LENGTH : PH_DONE;
    } else {
        f->keep = 0;
        f->phase = PH_CLOSE;
    }
}

/* Consumes what has arrived of the `remain` bytes of a body or chunk; 1 once all have. */
static inline int frame_take(frame_t *f, size_t len) {
    size_t avail = len - f->pos;
    size_t take = (long long)avail < f->remain ? avail : (size_t)f->remain;
    f->pos += take;
    f->remain -= (long long)take;
    return f->remain == 0;
}

/* Follows the response over the buffer's first `len` bytes (all that has arrived). */
static inline void frame_feed(frame_t *f, const char *b, size_t len) {
    for (;;) {
        switch (f->phase) {
        case PH_HEAD: {
            size_t from = f->pos;
            const char *hit = NULL;
            for (size_t i = from; i + 3 < len; i++)
                if (b[i] == '\r' && b[i + 1] == '\n' && b[i + 2] == '\r' && b[i + 3] == '\n') {
                    hit = b + i;
                    break;
                }
            if (hit == NULL) {
                if (len - from > HEAD_MAX) frame_fail(f, "invalid HTTP from the target: head too long");
                return;
            }
            frame_head(f, b, (size_t)(hit - b));
            break;
        }
        case PH_LENGTH:
            if (!frame_take(f, len)) return;
            f->phase = PH_DONE;
            break;
        case PH_CHUNK_SIZE: {
            long e = find_crlf(b, f->pos, len);
            if (e < 0) {
                if (len - f->pos > 1024) frame_fail(f, "invalid HTTP from the target: bad chunk size");
                return;
            }
            long long n = 0;
            size_t i = f->pos, digits = 0;
            for (; i < (size_t)e; i++, digits++) {
                char c = b[i];
                int d = c >= '0' && c <= '9' ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
                if (d < 0) break;
                if (n > (1LL << 40)) break;
                n = n * 16 + d;
            }
            if (digits == 0 || (i < (size_t)e && b[i] != ';' && b[i] != ' ' && b[i] != '\t')) {
                frame_fail(f, "invalid HTTP from the target: bad chunk size");
                return;
            }
            f->pos = (size_t)e + 2;
            if (n == 0) {
                f->phase = PH_TRAILER;
            } else {
                f->remain = n;
                f->phase = PH_CHUNK_DATA;
            }
            break;
        }
        case PH_CHUNK_DATA:
            if (!frame_take(f, len)) return;
            f->phase = PH_CHUNK_CRLF;
            break;
        case PH_CHUNK_CRLF:
            if (len - f->pos < 2) return;
            if (b[f->pos] != '\r' || b[f->pos + 1] != '\n') {
                frame_fail(f, "invalid HTTP from the target: chunk not followed by CRLF");
                return;
            }
            f->pos += 2;
            f->phase = PH_CHUNK_SIZE;
            break;
        case PH_TRAILER: {
            long e = find_crlf(b, f->pos, len);
            if (e < 0) return;
            int empty = (size_t)e == f->pos;
            f->pos = (size_t)e + 2;
            if (empty) f->phase = PH_DONE;
            break;
        }
        case PH_CLOSE:
            f->pos = len;
            return;
        case PH_DONE:
        case PH_ERROR:
            return;
        }
    }
}

#endif
