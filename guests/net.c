/* Workload "net" (issue 18): a guest on virtio-net that answers ARP, ICMP echo and UDP
 * echo (port 7) for its address, counts datagrams to port 9 (discard), and stops when
 * a datagram to port 9 says "quit". Command line:
 *   transport=pci|mmio (pci); slot=N (mmio: hushvm's slot, default 3), mmio=ADDR (decimal) and
 *   gsi=N override the window and line; ip=A.B.C.D (10.77.0.2); mrg_rxbuf=0|1 (1);
 *   event_idx=0|1 (1); irq=0|1 (1: halt until an interrupt; 0: poll);
 *   flood=N: instead, send N UDP datagrams of size=BYTES (64) payload to peer=A.B.C.D
 *   (10.77.0.1) port 9, broadcast MAC, as fast as the ring takes them, counting what
 *   arrives meanwhile; then report and stop. verbose=1 prints each frame received.
 * Prints "net: ready mac=.. features=.." once the device runs (the host starts its side
 * then), and at the end "net: rx= tx= arp= icmp= udp= discard= errors= doorbells=
 * rx_irqs= tx_irqs= merged= tsc=" (fixed width fields). */
#include "lib.h"
#include "net.h"

#define ETH_ARP 0x0806
#define ETH_IP 0x0800
#define IP_ICMP 1
#define IP_UDP 17
#define PORT_ECHO 7
#define PORT_DISCARD 9
#define VIRTIO_MMIO_BASE 0xc0000000u

static uint8_t frame[NET_FRAME_MAX];
static uint8_t reply[NET_FRAME_MAX];
static uint8_t my_ip[4] = {10, 77, 0, 2};
static uint32_t arp_replies, icmp_replies, udp_replies, discarded;
static int quit, verbose;

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void copy(uint8_t *to, const uint8_t *from, uint32_t n) { while (n--) *to++ = *from++; }
static int same(const uint8_t *a, const uint8_t *b, uint32_t n)
{
    while (n--) if (*a++ != *b++) return 0;
    return 1;
}

/* The Internet checksum (RFC 1071) of `len` bytes. */
static uint16_t checksum(const uint8_t *p, uint32_t len)
{
    uint32_t sum = 0;
    for (uint32_t i = 0; i + 1 < len; i += 2) sum += get16(p + i);
    if (len & 1) sum += (uint32_t)p[len - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* "A.B.C.D" into `ip`; leaves it alone if malformed. */
static void parse_ip(const char *text, uint8_t *ip)
{
    uint8_t parsed[4];
    if (!text) return;
    for (int part = 0; part < 4; part++) {
        uint32_t value = 0, digits = 0;
        for (; *text >= '0' && *text <= '9' && digits < 3; text++, digits++)
            value = value * 10 + (uint32_t)(*text - '0');
        if (!digits || value > 255) return;
        parsed[part] = (uint8_t)value;
        if (part < 3) {
            if (*text != '.') return;
            text++;
        }
    }
    if (*text != 0 && *text != ' ') return;
    copy(ip, parsed, 4);
}

/* Starts a reply to `frame` in `reply`: Ethernet addresses swapped. */
static void reply_ethernet(void)
{
    copy(reply, frame + 6, 6);
    copy(reply + 6, netdev_mac, 6);
    copy(reply + 12, frame + 12, 2);
}

static void answer_arp(uint32_t len)
{
    const uint8_t *arp = frame + 14;
    if (len < 42 || get16(arp) != 1 || get16(arp + 2) != ETH_IP || get16(arp + 6) != 1) return;
    if (!same(arp + 24, my_ip, 4)) return;
    reply_ethernet();
    uint8_t *out = reply + 14;
    copy(out, arp, 6);
    put16(out + 6, 2);              /* reply */
    copy(out + 8, netdev_mac, 6);   /* sender: us */
    copy(out + 14, my_ip, 4);
    copy(out + 18, arp + 8, 10);    /* target: the asker's MAC and IP */
    netdev_send(reply, 42);
    arp_replies++;
}

/* The IPv4 reply header: addresses swapped, TTL 64, checksum made. */
static void reply_ip(const uint8_t *ip, uint32_t header_len, uint32_t total)
{
    uint8_t *out = reply + 14;
    copy(out, ip, header_len);
    put16(out + 2, (uint16_t)total);
    out[8] = 64;
    copy(out + 12, my_ip, 4);
    copy(out + 16, ip + 12, 4);
    put16(out + 10, 0);
    put16(out + 10, checksum(out, header_len));
}

static void answer_ip(uint32_t len)
{
    const uint8_t *ip = frame + 14;
    if (len < 34 || (ip[0] >> 4) != 4) return;
    uint32_t header_len = (ip[0] & 0xf) * 4u, total = get16(ip + 2);
    if (header_len < 20 || total < header_len || 14 + total > len || !same(ip + 16, my_ip, 4)) return;
    if (get16(ip + 6) & 0x3fff) return; /* fragments: not for this guest */
    const uint8_t *payload = ip + header_len;
    uint32_t payload_len = total - header_len;
    uint8_t *out = reply + 14 + header_len;
    if (ip[9] == IP_ICMP && payload_len >= 8 && payload[0] == 8) {
        reply_ethernet();
        reply_ip(ip, header_len, total);
        copy(out, payload, payload_len);
        out[0] = 0; /* echo reply */
        put16(out + 2, 0);
        put16(out + 2, checksum(out, payload_len));
        netdev_send(reply, 14 + total);
        icmp_replies++;
    } else if (ip[9] == IP_UDP && payload_len >= 8 && get16(payload + 4) <= payload_len) {
        uint16_t port = get16(payload + 2), udp_len = get16(payload + 4);
        if (port == PORT_DISCARD) {
            discarded++;
            quit |= udp_len >= 12 && same(payload + 8, (const uint8_t *)"quit", 4);
        } else if (port == PORT_ECHO && udp_len >= 8) {
            reply_ethernet();
            reply_ip(ip, header_len, header_len + udp_len);
            copy(out, payload, udp_len);
            copy(out, payload + 2, 2);
            copy(out + 2, payload, 2);
            put16(out + 6, 0); /* no UDP checksum: allowed over IPv4 */
            netdev_send(reply, 14 + header_len + udp_len);
            udp_replies++;
        }
    }
}

static void handle(uint32_t len)
{
    if (len < 14) return;
    uint16_t type = get16(frame + 12);
    if (verbose) {
        put_str("net: frame len=");
        put_dec(len);
        put_str(" type=");
        put_hex(type);
        put_char('\n');
    }
    if (type == ETH_ARP) answer_arp(len);
    else if (type == ETH_IP) answer_ip(len);
}

/* Everything waiting: answered in one batch, one doorbell pass at the end. */
static void drain(void)
{
    uint32_t len;
    while ((len = netdev_receive(frame)) != 0) handle(len);
    netdev_flush();
}

static void serve(void)
{
    while (!quit) {
        drain();
        if (!quit) netdev_wait(0);
    }
}

/* A broadcast UDP datagram to peer:9 with `size` bytes of payload. */
static uint32_t flood_frame(const uint8_t *peer, uint32_t size)
{
    if (size > NET_FRAME_MAX - 42) size = NET_FRAME_MAX - 42;
    for (int i = 0; i < 6; i++) reply[i] = 0xff;
    copy(reply + 6, netdev_mac, 6);
    put16(reply + 12, ETH_IP);
    uint8_t *ip = reply + 14, *udp = ip + 20;
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(28 + size));
    put16(ip + 4, 0);
    put16(ip + 6, 0x4000); /* don't fragment */
    ip[8] = 64;
    ip[9] = IP_UDP;
    put16(ip + 10, 0);
    copy(ip + 12, my_ip, 4);
    copy(ip + 16, peer, 4);
    put16(ip + 10, checksum(ip, 20));
    put16(udp, 9999);
    put16(udp + 2, PORT_DISCARD);
    put16(udp + 4, (uint16_t)(8 + size));
    put16(udp + 6, 0);
    for (uint32_t i = 0; i < size; i++) udp[8 + i] = (uint8_t)('a' + i % 26);
    return 42 + size;
}

static void flood(uint32_t count, const uint8_t *peer, uint32_t size)
{
    uint32_t len = flood_frame(peer, size);
    for (uint32_t sent = 0; sent < count; sent++) {
        netdev_send(reply, len);
        /* A doorbell pass per half ring: the device works on one half while the driver
         * fills the other. */
        if (sent % (NETQ_SIZE / 2) == NETQ_SIZE / 2 - 1) netdev_flush();
        while (netdev_receive(frame)) { }
    }
    netdev_flush();
    while (netdev_tx_pending()) netdev_wait(1);
    while (netdev_receive(frame)) { }
}

static void report(uint64_t tsc)
{
    struct netdev_stats *s = &netdev_stats;
    put_str("net:");
    put_field("rx", s->rx_frames);
    put_field("tx", s->tx_frames);
    put_field("arp", arp_replies);
    put_field("icmp", icmp_replies);
    put_field("udp", udp_replies);
    put_field("discard", discarded);
    put_field("errors", s->rx_errors);
    put_field("doorbells", s->doorbells);
    put_field("rx_irqs", s->rx_interrupts);
    put_field("tx_irqs", s->tx_interrupts);
    put_field("merged", s->merged_frames);
    put_field("tsc", tsc);
    put_char('\n');
}

static void print_mac(void)
{
    for (int i = 0; i < 6; i++) {
        if (i) put_char(':');
        put_char("0123456789abcdef"[netdev_mac[i] >> 4]);
        put_char("0123456789abcdef"[netdev_mac[i] & 15]);
    }
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    uint32_t slot = cmdline_u32(mbi, "slot", 3);
    struct netdev_options options = {
        .pci = !value_is(cmdline_value(mbi, "transport"), "mmio"),
        .mmio_base = cmdline_u32(mbi, "mmio", VIRTIO_MMIO_BASE + 0x1000u * slot),
        .mmio_gsi = (uint8_t)cmdline_u32(mbi, "gsi", 5 + slot),
        .mrg_rxbuf = (int)cmdline_u32(mbi, "mrg_rxbuf", 1),
        .event_idx = (int)cmdline_u32(mbi, "event_idx", 1),
        .interrupts = (int)cmdline_u32(mbi, "irq", 1),
    };
    parse_ip(cmdline_value(mbi, "ip"), my_ip);
    verbose = (int)cmdline_u32(mbi, "verbose", 0);
    int status = netdev_open(&options);
    if (status) {
        put_str("net: no device, step ");
        put_dec((uint32_t)-status);
        put_char('\n');
        return 4;
    }
    put_str("net: ready mac=");
    print_mac();
    put_str(" features=");
    put_hex(netdev_features);
    put_str(options.pci ? " transport=pci\n" : " transport=mmio\n");
    uint64_t start = rdtsc();
    uint32_t count = cmdline_u32(mbi, "flood", 0);
    /* flood=0 sends nothing and stops: a bench's run without iterations. */
    if (cmdline_value(mbi, "flood")) {
        uint8_t peer[4] = {10, 77, 0, 1};
        parse_ip(cmdline_value(mbi, "peer"), peer);
        flood(count, peer, cmdline_u32(mbi, "size", 64));
    } else {
        serve();
    }
    report(rdtsc() - start);
    return netdev_stats.rx_errors ? 2 : 0;
}
