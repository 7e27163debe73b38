/* A plain answer's head, read strictly, so that the taker can skip llhttp for it.
 *
 * Most answers of a load test are alike: a status line, a dozen well-formed headers, a body of
 * a stated length. For those, the module (module.c) hands the taker the few things it reads from
 * the head (status, where the body starts, Content-Type, Content-Encoding, Retry-After) and the
 * taker builds the outcome without running llhttp over the bytes again (replay/send/wire.py;
 * the Python sender too, for an answer that comes whole in one read: replay/send/client.py).
 * Everything else goes to llhttp as before: a head this reader is not sure of is never judged
 * here. So it accepts only a subset of what llhttp accepts (tested against it: test_wire_head):
 * HTTP/1.0 or 1.1, a final status of 200-599 other than 204 and 304, header names that are
 * tokens, values of visible ASCII, spaces and tabs, exactly one Content-Length of digits (then
 * optional spaces or tabs), no Transfer-Encoding, no Upgrade, at most one Connection header and
 * that one `close` or `keep-alive`, no interim head, and the body's end at the answer's end.
 */
#ifndef LOADTAPE_WIRE_HEAD_H
#define LOADTAPE_WIRE_HEAD_H

#include <stddef.h>
#include <string.h>
#include <strings.h>

typedef struct {
    int status;
    size_t body_at;                 /* the body's first byte */
    size_t ctype, ctype_len;        /* Content-Type's value (the last one), as llhttp gives it */
    size_t enc, enc_len;            /* Content-Encoding's */
    size_t retry, retry_len;        /* Retry-After's */
    int has_ctype, has_enc, has_retry;
    int keep;                       /* the connection may carry another request (llhttp's word) */
} head_info;

static inline int head_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static inline int head_vchar(unsigned char c) { return (c >= 0x20 && c <= 0x7e) || c == '\t'; }

/* 1 if `b` (`len` bytes, the whole answer) is such a plain answer; `h` then says where its parts
 * are. 0: llhttp reads it. */
static inline int head_read(const char *b, size_t len, head_info *h) {
    memset(h, 0, sizeof *h);
    if (len < 16 || memcmp(b, "HTTP/1.", 7) != 0 || (b[7] != '0' && b[7] != '1') || b[8] != ' ')
        return 0;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (b[i] < '0' || b[i] > '9') return 0;
        st = st * 10 + (b[i] - '0');
    }
    if (st < 200 || st > 599 || st == 204 || st == 304) return 0;
    int keep = b[7] == '1', connection = 0;
    size_t p = 12;
    if (b[p] == ' ')
        for (p++; p < len && b[p] != '\r'; p++)
            if (!head_vchar((unsigned char)b[p])) return 0;
    if (p + 1 >= len || b[p] != '\r' || b[p + 1] != '\n') return 0;
    p += 2;
    long long length = -1;
    for (;;) { /* a header line, or the blank line that ends the head */
        if (p + 1 >= len) return 0;
        if (b[p] == '\r') {
            if (b[p + 1] != '\n') return 0;
            p += 2;
            break;
        }
        size_t name = p;
        while (p < len && head_tchar((unsigned char)b[p])) p++;
        if (p == name || p >= len || b[p] != ':') return 0;
        size_t nlen = p - name;
        p++;
        while (p < len && (b[p] == ' ' || b[p] == '\t')) p++;
        size_t v = p;
        while (p < len && b[p] != '\r') {
            if (!head_vchar((unsigned char)b[p])) return 0;
            p++;
        }
        if (p + 1 >= len || b[p + 1] != '\n') return 0;
        size_t vlen = p - v;
        p += 2;
        const char *n = b + name;
        if (nlen == 14 && strncasecmp(n, "content-length", 14) == 0) {
            if (length >= 0) return 0; /* llhttp refuses a second one */
            size_t i = 0;
            long long x = 0;
            for (; i < vlen && b[v + i] >= '0' && b[v + i] <= '9'; i++) {
                if (i >= 18) return 0;
                x = x * 10 + (b[v + i] - '0');
            }
            if (i == 0) return 0;
            for (; i < vlen; i++)
                if (b[v + i] != ' ' && b[v + i] != '\t') return 0;
            length = x;
        } else if ((nlen == 17 && strncasecmp(n, "transfer-encoding", 17) == 0) ||
                   (nlen == 7 && strncasecmp(n, "upgrade", 7) == 0)) {
            return 0;
        } else if (nlen == 10 && strncasecmp(n, "connection", 10) == 0) {
            size_t k = vlen;
            while (k && (b[v + k - 1] == ' ' || b[v + k - 1] == '\t')) k--;
            if (connection++) return 0;
            if (k == 5 && strncasecmp(b + v, "close", 5) == 0) keep = 0;
            else if (k == 10 && strncasecmp(b + v, "keep-alive", 10) == 0) keep = 1;
            else return 0;
        } else if (nlen == 12 && strncasecmp(n, "content-type", 12) == 0) {
            h->ctype = v, h->ctype_len = vlen, h->has_ctype = 1;
        } else if (nlen == 16 && strncasecmp(n, "content-encoding", 16) == 0) {
            h->enc = v, h->enc_len = vlen, h->has_enc = 1;
        } else if (nlen == 11 && strncasecmp(n, "retry-after", 11) == 0) {
            h->retry = v, h->retry_len = vlen, h->has_retry = 1;
        }
    }
    if (length < 0 || (size_t)length != len - p) return 0;
    h->status = st;
    h->body_at = p;
    h->keep = keep;
    return 1;
}

#endif
