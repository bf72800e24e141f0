/* Workload "vsock" (issue 19): the guest drives virtio-vsock (device 19) on either
 * transport (the first virtio-mmio window holding it, else virtio-pci), polling its
 * rings. Command line:
 *   mode=echo port=P conns=N   listen on port P; echo every byte of N host
 *                              connections back; done when all N are closed.
 *   mode=client port=P conns=N bytes=B
 *                              open N connections at once to host port P, send B
 *                              bytes on each (byte j of connection c: pattern(c, j)),
 *                              check the B bytes echoed back, then close.
 *   mode=greedy port=P bytes=B send B bytes on one connection ignoring the host's
 *                              credit; the device is to reset it.
 *   mode=sink port=P conns=N   as echo, but the bytes are consumed, not echoed.
 *   mode=source port=P conns=N bytes=B
 *                              as client, but nothing comes back: close once sent.
 * Data goes in messages of 4 KiB (the receive buffers hold a header and 4 KiB).
 * transport=pci skips looking for the device on virtio-mmio.
 * Prints "vsock: mode=.. conns=N bytes=B refused=R resets=S errors=E tsc=T". */
#include "lib.h"
#include "pci.h"
#include "virtio.h"
#include "virtio_pci.h"

#define HOST_CID 2
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUTDOWN_BOTH 3
#define HDR 44
#define MSG 4096
#define RX_BUF (HDR + MSG)
#define MAX_CONNS 32
/* What the guest lets each connection's peer have in flight: its echo buffer. */
#define GUEST_BUF 16384
#define NO_CONN 0xffffffffu

struct hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

struct conn {
    uint32_t used, local, peer;       /* local: the guest's port */
    uint32_t state;                   /* 0 free, 1 connecting, 2 open, 3 closing */
    uint32_t peer_buf, peer_fwd, sent; /* the host's credit, and what we sent */
    uint32_t fwd;                     /* bytes the guest consumed */
    uint32_t received, checked;       /* client: bytes back, of them right */
    uint32_t pending_len;             /* echo: bytes to send back */
    uint32_t credit_asked;
    uint8_t pending[GUEST_BUF];
};

static struct vq rxq __attribute__((aligned(4096)));
static struct vq txq __attribute__((aligned(4096)));
static struct vq evq __attribute__((aligned(4096)));
static uint8_t rx_bufs[VQ_SIZE][RX_BUF] __attribute__((aligned(4096)));
static uint8_t tx_buf[HDR] __attribute__((aligned(64)));
static int one_way; /* sink and source: nothing is echoed */
static struct conn conns[MAX_CONNS];
static uint64_t guest_cid;
static uint32_t errors, refused, resets, closed, total_bytes;

static uint8_t pattern(uint32_t c, uint32_t j) { return (uint8_t)(j * 31u + c * 7u + (j >> 8)); }

static inline void mmio_w32(uint32_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint32_t mmio_r32(uint32_t a) { return *(volatile uint32_t *)a; }

/* virtio-mmio, every queue set up before DRIVER_OK. */
static int open_mmio(void)
{
    for (int slot = 0; slot < 3; slot++) {
        if (!virtio_present(slot, 19)) continue;
        uint32_t base = 0xc0000000u + 0x1000u * (uint32_t)slot;
        mmio_w32(base + 0x070, 0);
        mmio_w32(base + 0x070, 1 | 2);
        mmio_w32(base + 0x024, 1);
        mmio_w32(base + 0x020, 1); /* VIRTIO_F_VERSION_1 */
        mmio_w32(base + 0x070, 1 | 2 | 8);
        if (!(mmio_r32(base + 0x070) & 8)) return -3;
        virtio_add_queue(&rxq, slot, 0);
        virtio_add_queue(&txq, slot, 1);
        virtio_add_queue(&evq, slot, 2);
        guest_cid = mmio_r32(base + 0x100) | ((uint64_t)mmio_r32(base + 0x104) << 32);
        mmio_w32(base + 0x070, 1 | 2 | 8 | 4);
        return 0;
    }
    return -1;
}

static struct virtio_pci pci;

static int open_pci(void)
{
    if (virtio_pci_open(&pci, 19, 0)) return -1;
    if (virtio_pci_queue(&pci, &rxq, 0, VIRTIO_MSI_NO_VECTOR) ||
        virtio_pci_queue(&pci, &txq, 1, VIRTIO_MSI_NO_VECTOR) ||
        virtio_pci_queue(&pci, &evq, 2, VIRTIO_MSI_NO_VECTOR))
        return -2;
    guest_cid = virtio_pci_read32(pci.device) | ((uint64_t)virtio_pci_read32(pci.device + 4) << 32);
    return virtio_pci_start(&pci) ? -3 : 0;
}

static void ring(struct vq *q, int queue)
{
    __asm__ volatile("" ::: "memory");
    if (q->notify_width == 2)
        *(volatile uint16_t *)q->notify = (uint16_t)queue;
    else
        mmio_w32(q->notify, (uint32_t)queue);
}

static void post_rx(uint16_t id)
{
    rxq.avail.ring[rxq.avail.idx % VQ_SIZE] = id;
    __asm__ volatile("" ::: "memory");
    rxq.avail.idx++;
}

static void post_all_rx(void)
{
    for (uint16_t i = 0; i < VQ_SIZE; i++) {
        rxq.desc[i].addr = (uint32_t)rx_bufs[i];
        rxq.desc[i].len = RX_BUF;
        rxq.desc[i].flags = 2; /* device writes */
        post_rx(i);
    }
    ring(&rxq, 0);
}

/* One packet on the transmit queue, waiting for the device to take it. */
static void send(struct conn *c, uint16_t op, uint32_t flags, const uint8_t *data, uint32_t len)
{
    struct hdr *h = (struct hdr *)tx_buf;
    h->src_cid = guest_cid;
    h->dst_cid = HOST_CID;
    h->src_port = c->local;
    h->dst_port = c->peer;
    h->len = len;
    h->type = 1;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = GUEST_BUF;
    h->fwd_cnt = c->fwd;
    /* The header and the data in descriptors of their own: no copy (every guest
     * instruction costs here). */
    struct vbuf bufs[2] = {{tx_buf, HDR, 0}, {(void *)data, len, 0}};
    virtio_request(&txq, 1, bufs, len ? 2 : 1);
    if (op == OP_RW) c->sent += len;
}

static uint32_t host_credit(const struct conn *c) { return c->peer_buf - (c->sent - c->peer_fwd); }

static struct conn *find(uint32_t local, uint32_t peer)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (conns[i].used && conns[i].local == local && conns[i].peer == peer) return &conns[i];
    return 0;
}

static struct conn *new_conn(uint32_t local, uint32_t peer)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (!conns[i].used) {
            struct conn *c = &conns[i];
            c->used = 1, c->local = local, c->peer = peer, c->state = 1;
            c->peer_buf = c->peer_fwd = c->sent = c->fwd = 0;
            c->received = c->checked = c->pending_len = c->credit_asked = 0;
            return c;
        }
    return 0;
}

static void drop_conn(struct conn *c) { c->used = 0; closed++; }

/* Data for connection c: the echo server keeps it to send back; the client checks it. */
static void take_data(struct conn *c, const uint8_t *data, uint32_t len, int echo)
{
    total_bytes += len;
    if (echo && one_way) {
        c->fwd += len;
        if (c->fwd % 8192 < len) send(c, OP_CREDIT_UPDATE, 0, 0, 0);
        return;
    }
    if (echo) {
        if (c->pending_len + len > GUEST_BUF) { errors++; return; } /* the host broke credit */
        for (uint32_t i = 0; i < len; i++) c->pending[c->pending_len + i] = data[i];
        c->pending_len += len;
        return;
    }
    uint32_t index = (uint32_t)(c - conns);
    for (uint32_t i = 0; i < len; i++, c->received++) c->checked += data[i] == pattern(index, c->received);
    c->fwd += len;
    if (c->fwd % 8192 < len) send(c, OP_CREDIT_UPDATE, 0, 0, 0);
}

static void packet(const struct hdr *h, const uint8_t *data, uint32_t listen_port, int echo)
{
    if (h->dst_cid != guest_cid || h->src_cid != HOST_CID) { errors++; return; }
    struct conn *c = find(h->dst_port, h->src_port);
    if (c) { c->peer_buf = h->buf_alloc; c->peer_fwd = h->fwd_cnt; c->credit_asked = 0; }
    switch (h->op) {
    case OP_REQUEST:
        if (c || h->dst_port != listen_port || !(c = new_conn(h->dst_port, h->src_port))) {
            static struct conn reply; /* static: no memset of its buffer */
            reply.local = h->dst_port, reply.peer = h->src_port;
            send(&reply, OP_RST, 0, 0, 0);
            return;
        }
        c->peer_buf = h->buf_alloc, c->peer_fwd = h->fwd_cnt, c->state = 2;
        send(c, OP_RESPONSE, 0, 0, 0);
        return;
    case OP_RESPONSE:
        if (c && c->state == 1) c->state = 2;
        return;
    case OP_RST:
        if (!c) return;
        if (c->state == 1) refused++;
        else if (c->state == 2) resets++;
        drop_conn(c);
        return;
    case OP_SHUTDOWN:
        /* The host sends no more: once its bytes are echoed, close both ways. */
        if (c && c->state == 2) c->state = echo ? 4 : 2;
        return;
    case OP_RW:
        if (c && c->state >= 2) take_data(c, data, h->len, echo);
        return;
    case OP_CREDIT_REQUEST:
        if (c) send(c, OP_CREDIT_UPDATE, 0, 0, 0);
        return;
    default:
        return;
    }
}

/* Serves every used receive buffer; returns how many. */
static int poll_rx(uint32_t listen_port, int echo)
{
    int served = 0;
    /* At most a ring's worth: the caller's own sends wait otherwise. */
    while (served < VQ_SIZE && *(volatile uint16_t *)&rxq.used.idx != rxq.last_used) {
        uint16_t slot = rxq.last_used % VQ_SIZE;
        uint32_t id = rxq.used.ring[slot].id, len = rxq.used.ring[slot].len;
        rxq.last_used++;
        const struct hdr *h = (const struct hdr *)rx_bufs[id % VQ_SIZE];
        if (len >= HDR && h->len <= len - HDR) packet(h, rx_bufs[id % VQ_SIZE] + HDR, listen_port, echo);
        else errors++;
        post_rx((uint16_t)(id % VQ_SIZE));
        served++;
    }
    if (served) ring(&rxq, 0);
    return served;
}

/* Echo: send back what is pending, within the host's credit. */
static void echo_pending(void)
{
    for (int i = 0; i < MAX_CONNS; i++) {
        struct conn *c = &conns[i];
        if (!c->used || c->state < 2 || c->state == 3) continue;
        while (c->pending_len) {
            uint32_t n = c->pending_len, credit = host_credit(c);
            if (n > MSG) n = MSG;
            if (n > credit) n = credit;
            if (!n) {
                if (!c->credit_asked) { c->credit_asked = 1; send(c, OP_CREDIT_REQUEST, 0, 0, 0); }
                break;
            }
            c->fwd += n;
            send(c, OP_RW, 0, c->pending, n);
            for (uint32_t k = n; k < c->pending_len; k++) c->pending[k - n] = c->pending[k];
            c->pending_len -= n;
        }
        if (c->state == 4 && !c->pending_len) { c->state = 3; send(c, OP_SHUTDOWN, SHUTDOWN_BOTH, 0, 0); }
    }
}

static void run_echo(uint32_t port, uint32_t wanted)
{
    while (closed < wanted) {
        poll_rx(port, 1);
        echo_pending();
    }
}

static uint8_t chunk[MSG];

static void run_client(uint32_t port, uint32_t count, uint32_t bytes, int greedy)
{
    for (uint32_t i = 0; i < count; i++) {
        struct conn *c = new_conn(1024 + i, port);
        send(c, OP_REQUEST, 0, 0, 0);
    }
    uint32_t done = 0;
    while (closed < count) {
        poll_rx(0, 0);
        for (uint32_t i = 0; i < count; i++) {
            struct conn *c = &conns[i];
            if (!c->used || c->state != 2) continue;
            uint32_t left = bytes - c->sent, credit = host_credit(c);
            uint32_t n = left < MSG ? left : MSG;
            if (!greedy && n > credit) n = credit;
            if (n) {
                if (!one_way) /* one way, the bytes are not checked: no per-byte work */
                    for (uint32_t j = 0; j < n; j++) chunk[j] = pattern(i, c->sent + j);
                send(c, OP_RW, 0, chunk, n);
            } else if (left && !c->credit_asked) {
                c->credit_asked = 1;
                send(c, OP_CREDIT_REQUEST, 0, 0, 0);
            }
            if (!greedy && (one_way ? c->sent >= bytes : c->received >= bytes)) {
                c->state = 3;
                done++;
                send(c, OP_SHUTDOWN, SHUTDOWN_BOTH, 0, 0);
            }
            if (greedy && !left) { c->state = 3; send(c, OP_SHUTDOWN, SHUTDOWN_BOTH, 0, 0); }
        }
    }
    for (uint32_t i = 0; i < count; i++) errors += !greedy && conns[i].checked != conns[i].received;
    if (one_way) total_bytes = count * bytes;
    (void)done;
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    const char *mode = cmdline_value(mbi, "mode");
    uint32_t port = cmdline_u32(mbi, "port", 5000), count = cmdline_u32(mbi, "conns", 1);
    uint32_t bytes = cmdline_u32(mbi, "bytes", 4096);
    if (count > MAX_CONNS) count = MAX_CONNS;
    int status = value_is(cmdline_value(mbi, "transport"), "pci") ? -1 : open_mmio();
    if (status == -1) status = open_pci();
    if (status) {
        put_str("vsock: no device");
        put_field("status", (uint64_t)-status);
        put_char('\n');
        return 4;
    }
    post_all_rx();
    put_str("vsock-ready\n");
    uint64_t start = rdtsc();
    one_way = value_is(mode, "sink") || value_is(mode, "source");
    int echo = value_is(mode, "echo") || value_is(mode, "sink"), greedy = value_is(mode, "greedy");
    if (echo)
        run_echo(port, count);
    else
        run_client(port, greedy ? 1 : count, bytes, greedy);
    uint64_t end = rdtsc();
    put_str("vsock:");
    put_str(one_way ? (echo ? " mode=sink" : " mode=source")
                    : echo ? " mode=echo" : greedy ? " mode=greedy" : " mode=client");
    put_field("conns", closed);
    put_field("bytes", total_bytes);
    put_field("refused", refused);
    put_field("resets", resets);
    put_field("errors", errors);
    put_field("tsc", end - start);
    put_char('\n');
    return errors ? 2 : 0;
}
