/* Tests for server/http_conns.c on real sockets (socket pairs) with a clock the test sets:
 * admission up to the cap, eviction of the connection that has waited longest for a head,
 * busy connections kept, the reserve, refusal with a 503, the per-address cap, the head and body
 * deadlines (bytes do not move them), the counters. A closed connection is seen from the
 * client's end of the pair, as a client would see it. */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/http_conns.h"
#include "tests/test.h"

#define N_MAX 16

typedef struct pair {
    int server, client; /* our end (handed to the table) and the client's */
    srv_conn *c;
    srv_conn_admit how;
} pair;

static struct sockaddr_in addr_of(const char *ip4)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    unsigned char *b = (unsigned char *)&a.sin_addr;
    sscanf(ip4, "%hhu.%hhu.%hhu.%hhu", &b[0], &b[1], &b[2], &b[3]);
    return a;
}

static int open_pair(srv_conns *t, pair *p, const char *ip, double now)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return -1;
    p->server = sv[0];
    p->client = sv[1];
    struct sockaddr_in a = addr_of(ip);
    p->c = srv_conns_open(t, p->server, (const struct sockaddr *)&a, now, &p->how);
    return p->c ? 0 : -1;
}

/* The client's end: what the server sent (into buf) and whether it has hung up. */
static bool hung_up(pair *p, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t k = recv(p->client, buf + n, cap - 1 - n, MSG_DONTWAIT);
        if (k > 0) {
            n += (size_t)k;
            continue;
        }
        buf[n] = 0;
        return k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
    }
}

static bool open_still(pair *p)
{
    char buf[1024];
    return !hung_up(p, buf, sizeof buf);
}

static void close_all(srv_conns *t, pair *p, int n)
{
    for (int i = 0; i < n; i++) {
        srv_conns_close(t, p[i].c);
        close(p[i].server);
        close(p[i].client);
    }
    srv_conns_free(t);
}

TEST(http_conns_evicts_the_longest_waiting_head_at_the_cap)
{
    srv_conns_opts o = {.max = 3, .reserve = 1};
    srv_conns *t = srv_conns_new(&o);
    pair p[N_MAX];
    int n = 0;
    for (; n < 3; n++) {
        CHECK(open_pair(t, &p[n], "10.0.0.1", 1.0 + n) == 0);
        CHECK_EQ_INT(p[n].how, SRV_CONN_ADMITTED);
    }
    srv_conns_head(t, p[0].c, 4.0); /* p[0] has sent its head: no longer evictable */
    CHECK(open_pair(t, &p[n++], "10.0.0.2", 5.0) == 0);
    CHECK_EQ_INT(p[3].how, SRV_CONN_ADMITTED);
    /* p[1] waited longest for a head (since 2.0); p[0] and p[2] stay. */
    CHECK_MSG(!open_still(&p[1]), "the longest-waiting connection was not closed");
    CHECK(open_still(&p[0]) && open_still(&p[2]) && open_still(&p[3]));
    CHECK(srv_conns_is_closing(t, p[1].c));
    srv_conns_stats st;
    srv_conns_stats_get(t, &st);
    CHECK_EQ_INT(st.open, 3);
    CHECK_EQ_INT(st.evicted, 1);
    CHECK_EQ_INT(st.accepted, 4);
    close_all(t, p, n);
}

TEST(http_conns_busy_ones_stay_then_reserve_then_refused)
{
    srv_conns_opts o = {.max = 2, .reserve = 2};
    srv_conns *t = srv_conns_new(&o);
    pair p[N_MAX];
    int n = 0;
    for (; n < 2; n++) {
        CHECK(open_pair(t, &p[n], "10.0.0.1", 1.0) == 0);
        srv_conns_head(t, p[n].c, 1.0);
        srv_conns_busy(t, p[n].c);
    }
    /* Both busy: the next two come in through the reserve. */
    for (; n < 4; n++) {
        CHECK(open_pair(t, &p[n], "10.0.0.1", 2.0 + n) == 0);
        CHECK_EQ_INT(p[n].how, SRV_CONN_RESERVE);
        CHECK(srv_conns_is_reserve(t, p[n].c));
    }
    CHECK(!srv_conns_is_reserve(t, p[0].c));
    /* The reserve is full of connections waiting for a head: a new one replaces the oldest. */
    CHECK(open_pair(t, &p[n++], "10.0.0.1", 10.0) == 0);
    CHECK_EQ_INT(p[4].how, SRV_CONN_RESERVE);
    CHECK_MSG(!open_still(&p[2]), "the oldest waiting reserve connection stayed");
    /* Every reserve connection busy too: refused with a 503 the client can read. */
    srv_conns_busy(t, p[3].c);
    srv_conns_busy(t, p[4].c);
    CHECK(open_pair(t, &p[n++], "10.0.0.1", 11.0) == 0);
    CHECK_EQ_INT(p[5].how, SRV_CONN_REFUSED);
    char buf[1024];
    CHECK(hung_up(&p[5], buf, sizeof buf) || buf[0]);
    CHECK_MSG(!strncmp(buf, "HTTP/1.1 503 ", 13) && strstr(buf, "\"too_many_connections\""),
              "refusal: %s", buf);
    /* Its Content-Length is the body's. */
    const char *cl = strstr(buf, "Content-Length: "), *body = strstr(buf, "\r\n\r\n");
    CHECK(cl && body);
    CHECK_EQ_INT(atoi(cl + 16), (long long)strlen(body + 4));
    CHECK(open_still(&p[0]) && open_still(&p[1]) && open_still(&p[3]) && open_still(&p[4]));
    srv_conns_stats st;
    srv_conns_stats_get(t, &st);
    CHECK_EQ_INT(st.refused, 1);
    CHECK_EQ_INT(st.reserve, 2);
    CHECK_EQ_INT(st.open, 4);
    close_all(t, p, n);
}

TEST(http_conns_per_address_cap_evicts_only_that_address)
{
    srv_conns_opts o = {.max = 100, .reserve = 1, .per_ip = 2};
    srv_conns *t = srv_conns_new(&o);
    pair p[N_MAX];
    CHECK(open_pair(t, &p[0], "192.168.1.1", 1.0) == 0); /* the oldest of all, other address */
    CHECK(open_pair(t, &p[1], "10.0.0.1", 2.0) == 0);
    CHECK(open_pair(t, &p[2], "10.0.0.1", 3.0) == 0);
    CHECK(open_pair(t, &p[3], "10.0.0.1", 4.0) == 0);
    CHECK_EQ_INT(p[3].how, SRV_CONN_ADMITTED);
    CHECK_MSG(!open_still(&p[1]), "10.0.0.1's oldest stayed open at its cap");
    CHECK_MSG(open_still(&p[0]), "another address's connection was evicted");
    CHECK(open_still(&p[2]) && open_still(&p[3]));
    /* The address's two connections busy: a third goes to the reserve, 192.168.1.1 is free. */
    srv_conns_busy(t, p[2].c);
    srv_conns_busy(t, p[3].c);
    CHECK(open_pair(t, &p[4], "10.0.0.1", 5.0) == 0);
    CHECK_EQ_INT(p[4].how, SRV_CONN_RESERVE);
    CHECK(open_pair(t, &p[5], "192.168.1.1", 6.0) == 0);
    CHECK_EQ_INT(p[5].how, SRV_CONN_ADMITTED);
    close_all(t, p, 6);
}

TEST(http_conns_head_and_body_deadlines_ignore_bytes)
{
    srv_conns_opts o = {.max = 10, .reserve = 1, .header_timeout = 10, .body_timeout = 5};
    srv_conns *t = srv_conns_new(&o);
    pair p[N_MAX];
    for (int i = 0; i < 4; i++)
        CHECK(open_pair(t, &p[i], "10.0.0.1", 100.0) == 0);
    srv_conns_head(t, p[1].c, 103.0); /* body due by 108 */
    srv_conns_head(t, p[2].c, 101.0);
    srv_conns_busy(t, p[2].c); /* busy: no deadline */
    /* Client bytes do not reach the table at all: only phase changes move a deadline. */
    CHECK(send(p[0].client, "GET", 3, 0) == 3);
    CHECK_EQ_INT(srv_conns_sweep(t, 109.9), 1); /* p[1]'s body is late */
    char buf[1024];
    hung_up(&p[1], buf, sizeof buf);
    CHECK_MSG(!strncmp(buf, "HTTP/1.1 408 ", 13) && strstr(buf, "\"request_timeout\""),
              "late body: %s", buf);
    CHECK(open_still(&p[0]) && open_still(&p[3]));
    CHECK_EQ_INT(srv_conns_sweep(t, 110.0), 2); /* p[0] and p[3]: head due by 110 */
    CHECK(!open_still(&p[0]) && !open_still(&p[3]));
    CHECK(open_still(&p[2]));
    /* A kept-alive connection's next head is due header_timeout after its answer ended. */
    srv_conns_idle(t, p[2].c, 200.0);
    CHECK_EQ_INT(srv_conns_sweep(t, 209.0), 0);
    CHECK_EQ_INT(srv_conns_sweep(t, 210.0), 1);
    CHECK(!open_still(&p[2]));
    srv_conns_stats st;
    srv_conns_stats_get(t, &st);
    CHECK_EQ_INT(st.header_timeouts, 3);
    CHECK_EQ_INT(st.body_timeouts, 1);
    CHECK_EQ_INT(st.open, 0);
    close_all(t, p, 4);
}

TEST(http_conns_ipv4_mapped_ipv6_is_the_same_address)
{
    srv_conns_opts o = {.max = 100, .reserve = 1, .per_ip = 1};
    srv_conns *t = srv_conns_new(&o);
    pair p[2];
    CHECK(open_pair(t, &p[0], "10.1.2.3", 1.0) == 0);
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
    unsigned char *b = a6.sin6_addr.s6_addr;
    b[10] = b[11] = 0xff;
    b[12] = 10, b[13] = 1, b[14] = 2, b[15] = 3;
    p[1].server = sv[0];
    p[1].client = sv[1];
    p[1].c = srv_conns_open(t, sv[0], (const struct sockaddr *)&a6, 2.0, &p[1].how);
    CHECK(p[1].c);
    CHECK_EQ_INT(p[1].how, SRV_CONN_ADMITTED);
    CHECK_MSG(!open_still(&p[0]), "::ffff:10.1.2.3 did not count as 10.1.2.3");
    close_all(t, p, 2);
}
