/* sink: the least a Storage SCP must do, as a floor for the flood benchmark.
 *
 * Per association (one forked process each, like dcmtk's storescp --fork):
 * accept every presentation context with its first transfer syntax, answer
 * C-ECHO, and for each C-STORE write the Part-10 file (preamble, "DICM", a
 * minimal file meta group, then the dataset fragments as they arrive) into
 * <dir>/.incoming/, rename it to <dir>/<SOP Instance UID>.dcm, and answer
 * Success. Nothing else: no header parse, no checks, no index, no access
 * control, no timeouts, no error recovery (a malformed PDU ends the process).
 * It is not a receiver to run anywhere but the benchmark: it shows how close
 * the sender's own cost leaves any receiver on the machine at hand.
 *
 *     cc -O2 -o sink bench/sink.c && ./sink PORT DIR
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_PDU 131072
#define IMPL_UID "2.25.212227088602216671227219177528299944206"

static int sock;
static char dir[4096];
static unsigned char *body;            /* one PDU body */
static unsigned char cmd[65536];       /* the command set being received */
static size_t cmd_len;
static int out_fd = -1;
static char temp_path[4200];
static unsigned long counter;
static uint8_t ts_of[256][65];         /* accepted transfer syntax per context id */

static void die(const char *what) { perror(what); _exit(1); }

static void read_exact(void *p, size_t n) {
    unsigned char *b = p;
    while (n) {
        ssize_t r = read(sock, b, n);
        if (r <= 0) { if (r < 0 && errno == EINTR) continue; _exit(r == 0 ? 0 : 1); }
        b += r; n -= (size_t)r;
    }
}

static void write_all(int fd, const void *p, size_t n) {
    const unsigned char *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0) { if (errno == EINTR) continue; die("write"); }
        b += w; n -= (size_t)w;
    }
}

static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static uint16_t be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put_be32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void put_be16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static void put_le16(unsigned char *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put_le32(unsigned char *p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }

/* an implicit VR little endian element; strings padded to even length */
static size_t put_elem(unsigned char *p, uint16_t elem, const void *v, uint32_t n) {
    uint32_t padded = n + (n & 1);
    put_le16(p, 0); put_le16(p + 2, elem); put_le32(p + 4, padded);
    memcpy(p + 8, v, n);
    if (n & 1) p[8 + n] = 0;
    return 8 + padded;
}

static size_t put_us(unsigned char *p, uint16_t elem, uint16_t v) {
    unsigned char b[2]; put_le16(b, v); return put_elem(p, elem, b, 2);
}

/* an explicit VR little endian file meta element (UI or OB) */
static size_t put_meta(unsigned char *p, uint16_t elem, const char *vr, const void *v, uint32_t n) {
    uint32_t padded = n + (n & 1);
    put_le16(p, 2); put_le16(p + 2, elem); memcpy(p + 4, vr, 2);
    size_t h;
    if (vr[0] == 'O') { p[6] = p[7] = 0; put_le32(p + 8, padded); h = 12; }
    else { put_le16(p + 6, (uint16_t)padded); h = 8; }
    memcpy(p + h, v, n);
    if (n & 1) p[h + n] = 0;
    return h + padded;
}

static void send_pdu(uint8_t type, const unsigned char *b, uint32_t n) {
    unsigned char h[6] = {type, 0};
    put_be32(h + 2, n);
    write_all(sock, h, 6);
    write_all(sock, b, n);
}

/* room in the A-ASSOCIATE-AC being built, or the association ends */
static void need(size_t have, size_t want, size_t cap) { if (have + want > cap) _exit(1); }

static void associate(uint32_t n) {
    static unsigned char ac[16384];
    size_t o = 0;
    if (n < 68) _exit(1);
    memcpy(ac, body, 68); /* version, reserved, called AE, calling AE, reserved: echoed */
    o = 68;
    for (size_t i = 68; i + 4 <= n;) {
        uint8_t type = body[i];
        uint16_t len = be16(body + i + 2);
        const unsigned char *it = body + i + 4;
        if (len > n - i - 4) _exit(1);
        if (type == 0x10) { need(o, 4u + len, sizeof ac); memcpy(ac + o, body + i, 4u + len); o += 4u + len; }
        if (type == 0x20) {
            if (len < 4) _exit(1);
            uint8_t id = it[0];
            const unsigned char *ts = NULL; uint16_t ts_len = 0;
            for (size_t j = 4; j + 4 <= len;) {
                uint16_t sl = be16(it + j + 2);
                if (sl > len - j - 4) _exit(1);
                if (it[j] == 0x40 && ts == NULL) { ts = it + j + 4; ts_len = sl; }
                j += 4u + sl;
            }
            if (ts == NULL || ts_len > 64) _exit(1);
            memcpy(ts_of[id], ts, ts_len); ts_of[id][ts_len] = 0;
            while (ts_len && ts_of[id][ts_len - 1] == 0) ts_of[id][--ts_len] = 0;
            need(o, 12u + ts_len, sizeof ac);
            ac[o] = 0x21; ac[o + 1] = 0; put_be16(ac + o + 2, (uint16_t)(8 + ts_len));
            ac[o + 4] = id; ac[o + 5] = 0; ac[o + 6] = 0; ac[o + 7] = 0;
            ac[o + 8] = 0x40; ac[o + 9] = 0; put_be16(ac + o + 10, ts_len);
            memcpy(ac + o + 12, ts_of[id], ts_len);
            o += 12u + ts_len;
        }
        i += 4u + len;
    }
    size_t ui = o, uid_len = strlen(IMPL_UID);
    need(o, 16 + uid_len, sizeof ac);
    ac[o] = 0x50; ac[o + 1] = 0; o += 4;
    ac[o] = 0x51; ac[o + 1] = 0; put_be16(ac + o + 2, 4); put_be32(ac + o + 4, MAX_PDU); o += 8;
    ac[o] = 0x52; ac[o + 1] = 0; put_be16(ac + o + 2, (uint16_t)uid_len); memcpy(ac + o + 4, IMPL_UID, uid_len);
    o += 4 + uid_len;
    put_be16(ac + ui + 2, (uint16_t)(o - ui - 4));
    send_pdu(0x02, ac, (uint32_t)o);
}

static void respond(uint8_t ctx, uint16_t field, uint16_t msg_id, const char *cls, const char *inst) {
    unsigned char b[1024], pdv[1100];
    size_t o = 12; /* group length element goes first */
    o += put_elem(b + o, 0x0002, cls, (uint32_t)strlen(cls));
    o += put_us(b + o, 0x0100, field);
    o += put_us(b + o, 0x0120, msg_id);
    o += put_us(b + o, 0x0800, 0x0101);
    o += put_us(b + o, 0x0900, 0x0000);
    if (inst) o += put_elem(b + o, 0x1000, inst, (uint32_t)strlen(inst));
    unsigned char gl[4]; put_le32(gl, (uint32_t)(o - 12));
    put_elem(b, 0x0000, gl, 4);
    put_be32(pdv, (uint32_t)(o + 2)); pdv[4] = ctx; pdv[5] = 0x03;
    memcpy(pdv + 6, b, o);
    send_pdu(0x04, pdv, (uint32_t)(o + 6));
}

static struct { uint16_t field, msg_id; char cls[65], inst[65]; } cur;

/* a UID: digits and dots only (it becomes a file name), at most 64 */
static void copy_uid(char *dst, const unsigned char *v, uint32_t n) {
    if (n > 64) _exit(1);
    memcpy(dst, v, n); dst[n] = 0;
    while (n && (dst[n - 1] == 0 || dst[n - 1] == ' ')) dst[--n] = 0;
    if (n == 0 || dst[0] == '.') _exit(1);
    for (uint32_t k = 0; k < n; k++)
        if (dst[k] != '.' && (dst[k] < '0' || dst[k] > '9')) _exit(1);
}

static uint16_t us(const unsigned char *v, uint32_t n) {
    if (n < 2) _exit(1);
    return (uint16_t)(v[0] | v[1] << 8);
}

static void command_done(uint8_t ctx) {
    uint16_t data_set_type = 0x0101;
    memset(&cur, 0, sizeof cur);
    for (size_t i = 0; i + 8 <= cmd_len;) {
        uint16_t elem = (uint16_t)(cmd[i + 2] | cmd[i + 3] << 8);
        uint32_t n = (uint32_t)cmd[i + 4] | cmd[i + 5] << 8 | cmd[i + 6] << 16 | (uint32_t)cmd[i + 7] << 24;
        const unsigned char *v = cmd + i + 8;
        if (n > cmd_len - i - 8) _exit(1);
        if (elem == 0x0002) copy_uid(cur.cls, v, n);
        else if (elem == 0x1000) copy_uid(cur.inst, v, n);
        else if (elem == 0x0100) cur.field = us(v, n);
        else if (elem == 0x0110) cur.msg_id = us(v, n);
        else if (elem == 0x0800) data_set_type = us(v, n);
        i += 8 + n;
    }
    cmd_len = 0;
    if (cur.field == 0x0030) { respond(ctx, 0x8030, cur.msg_id, cur.cls, NULL); return; }
    if (cur.field != 0x0001 || data_set_type == 0x0101 || !cur.cls[0] || !cur.inst[0]) _exit(1);
    snprintf(temp_path, sizeof temp_path, "%s/.incoming/%d-%lu.part", dir, (int)getpid(), counter++);
    out_fd = open(temp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0) die("open");
    static unsigned char pre[1024];
    memset(pre, 0, 128); memcpy(pre + 128, "DICM", 4);
    size_t o = 144; /* 132 + the group length element (12) */
    o += put_meta(pre + o, 0x0001, "OB", "\0\1", 2);
    o += put_meta(pre + o, 0x0002, "UI", cur.cls, (uint32_t)strlen(cur.cls));
    o += put_meta(pre + o, 0x0003, "UI", cur.inst, (uint32_t)strlen(cur.inst));
    o += put_meta(pre + o, 0x0010, "UI", ts_of[ctx], (uint32_t)strlen((char *)ts_of[ctx]));
    o += put_meta(pre + o, 0x0012, "UI", IMPL_UID, (uint32_t)strlen(IMPL_UID));
    unsigned char gl[4]; put_le32(gl, (uint32_t)(o - 144));
    put_le16(pre + 132, 2); put_le16(pre + 134, 0); memcpy(pre + 136, "UL", 2); put_le16(pre + 138, 4);
    memcpy(pre + 140, gl, 4);
    write_all(out_fd, pre, o);
}

static void dataset_done(uint8_t ctx) {
    char final[4200];
    if (close(out_fd) != 0) die("close");
    out_fd = -1;
    snprintf(final, sizeof final, "%s/%s.dcm", dir, cur.inst);
    if (rename(temp_path, final) != 0) die("rename");
    respond(ctx, 0x8001, cur.msg_id, cur.cls, cur.inst);
}

static void serve(void) {
    unsigned char h[6];
    for (;;) {
        read_exact(h, 6);
        uint32_t n = be32(h + 2);
        if (n > MAX_PDU + 64 && h[0] == 0x04) _exit(1);
        if (n > 1 << 20) _exit(1);
        read_exact(body, n);
        switch (h[0]) {
        case 0x01: associate(n); break;
        case 0x04:
            for (uint32_t i = 0; i + 6 <= n;) {
                uint32_t len = be32(body + i);
                uint8_t ctx = body[i + 4], ctrl = body[i + 5];
                const unsigned char *d = body + i + 6;
                uint32_t dn = len - 2;
                if (len < 2 || len > n - i - 4) _exit(1);
                if (ctrl & 1) {
                    if (cmd_len + dn > sizeof cmd) _exit(1);
                    memcpy(cmd + cmd_len, d, dn); cmd_len += dn;
                    if (ctrl & 2) command_done(ctx);
                } else {
                    if (out_fd < 0) _exit(1);
                    write_all(out_fd, d, dn);
                    if (ctrl & 2) dataset_done(ctx);
                }
                i += 4 + len;
            }
            break;
        case 0x05: { unsigned char z[4] = {0}; send_pdu(0x06, z, 4); _exit(0); }
        default: _exit(0); /* abort or anything else: the association ends */
        }
    }
}

static void reap(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
    errno = saved;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s PORT DIR\n", argv[0]); return 2; }
    snprintf(dir, sizeof dir, "%s", argv[2]);
    char incoming[4200];
    snprintf(incoming, sizeof incoming, "%s/.incoming", dir);
    mkdir(dir, 0755); mkdir(incoming, 0755);
    body = malloc(1 << 20);
    /* reaped as they end, so their CPU time lands in the parent's (the
       benchmark reads the process tree's) */
    struct sigaction sa = {.sa_handler = reap, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
    sigaction(SIGCHLD, &sa, NULL);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 64)) die("listen");
    for (;;) {
        sock = accept(ls, NULL, NULL);
        if (sock < 0) { if (errno == EINTR) continue; die("accept"); }
        pid_t pid = fork();
        if (pid == 0) {
            close(ls);
            setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            serve();
        }
        close(sock);
    }
}
